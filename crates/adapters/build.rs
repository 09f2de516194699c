//! Embeds `migrations/*.sql` as `OUT_DIR/migrations.rs`, which `postgres::MIGRATOR` reads. This is
//! what `sqlx::migrate!` did, without building sqlx's macros (and a second sqlx-core and
//! sqlx-postgres for them) into every build.

use std::path::Path;
use std::{env, fs};

fn main() {
    println!("cargo::rerun-if-changed=migrations");
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("migrations");
    let mut migrations = Vec::new();
    for entry in fs::read_dir(&dir).expect("crates/adapters/migrations is readable") {
        let path = entry.expect("a migrations/ entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("UTF-8 file names in migrations/");
        let Some(stem) = name.strip_suffix(".sql") else { continue };
        // sqlx's rules for a migration file: VERSION_DESCRIPTION.sql, `_` read as a space.
        let (version, description) =
            stem.split_once('_').unwrap_or_else(|| panic!("migrations/{name}: not VERSION_DESCRIPTION.sql"));
        let version: i64 =
            version.parse().unwrap_or_else(|_| panic!("migrations/{name}: version is not a number"));
        assert!(
            !description.ends_with(".up") && !description.ends_with(".down"),
            "migrations/{name}: reversible migrations are not embedded"
        );
        migrations.push((version, description.replace('_', " "), path.display().to_string()));
    }
    migrations.sort();
    let mut out = String::from(
        "/// `(version, description, sql)` of each file of `migrations/`, in version order.\n\
         const EMBEDDED_MIGRATIONS: &[(i64, &str, &str)] = &[\n",
    );
    for (version, description, path) in migrations {
        out.push_str(&format!("    ({version}, {description:?}, include_str!({path:?})),\n"));
    }
    out.push_str("];\n");
    let target = Path::new(&env::var("OUT_DIR").expect("set by cargo")).join("migrations.rs");
    fs::write(target, out).expect("OUT_DIR is writable");
}
