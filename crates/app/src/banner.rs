//! What the embedded default prints at start-up: the demo key and commands to try it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::startup::DemoTenant;

/// The start-up banner for the demo tenant, with ready-to-paste curl lines.
pub fn demo_banner(addr: SocketAddr, demo: &DemoTenant) -> String {
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    };
    let base = format!("http://{host}");
    let key = &demo.api_key;
    let scope = &demo.scope;
    [
        String::new(),
        "userexport is running in its embedded default mode (in-memory users and export records).".to_owned(),
        String::new(),
        format!("Demo tenant {scope}, API key (valid until this process stops):"),
        format!("  {key}"),
        String::new(),
        format!("Web console: open {base}/console and paste the key."),
        String::new(),
        "Export all users to CSV and wait for it:".to_owned(),
        format!(
            "  curl -s -X POST {base}/v1/exports/sync -H 'Authorization: Bearer {key}' \
             -H 'Content-Type: application/json' -d '{{\"format\":\"csv\"}}'"
        ),
        String::new(),
        "Download it (the \"id\" of that response in place of <id>):".to_owned(),
        format!("  curl -s -OJ {base}/v1/exports/<id>/download -H 'Authorization: Bearer {key}'"),
        String::new(),
        format!("API description: {base}/openapi.json"),
    ]
    .join("\n")
}

/// Prints [`demo_banner`] to stdout: the one place the application prints rather than logs.
#[allow(clippy::print_stdout)]
pub fn print_demo_banner(addr: SocketAddr, demo: &DemoTenant) {
    println!("{}\n", demo_banner(addr, demo));
}
