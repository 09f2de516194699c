//! RFC 9457 problem documents as the API sends them, printed as one readable line per field.

use serde::Deserialize;

/// Longest piece of a non-problem error body shown to the user.
const MAX_BODY_EXCERPT: usize = 200;

/// An `application/problem+json` body, the members a person reads (the exit code comes from the
/// status). Every member is optional: a proxy or an older server may send less.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub hint: Option<String>,
    #[serde(default)]
    pub errors: Option<Vec<FieldError>>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

impl Problem {
    /// The problem an error answer carries; a body that is not one (a proxy's HTML page, an empty
    /// body) becomes a problem with the status's reason and an excerpt of the body.
    pub fn from_body(reason: &str, body: &[u8]) -> Self {
        match serde_json::from_slice::<Self>(body) {
            Ok(problem) if problem.title.is_some() || problem.detail.is_some() => problem,
            _ => {
                let text = String::from_utf8_lossy(body);
                let excerpt: String = text.trim().chars().take(MAX_BODY_EXCERPT).collect();
                Self {
                    title: Some(reason.to_owned()),
                    detail: (!excerpt.is_empty()).then_some(excerpt),
                    ..Self::default()
                }
            }
        }
    }

    /// The lines to print: a headline, one line per invalid field, then the hint.
    pub fn lines(&self, status: u16) -> Vec<String> {
        let title = self.title.as_deref().unwrap_or("Request failed");
        let mut lines = vec![match &self.detail {
            Some(detail) => format!("{} ({status}): {}", printable(title), printable(detail)),
            None => format!("{} ({status})", printable(title)),
        }];
        for error in self.errors.iter().flatten() {
            let mut line = if error.field.is_empty() {
                format!("  {}", printable(&error.message))
            } else {
                format!("  {}: {}", printable(&error.field), printable(&error.message))
            };
            if !error.code.is_empty() {
                line.push_str(&format!(" [{}]", printable(&error.code)));
            }
            lines.push(line);
        }
        if let Some(hint) = &self.hint {
            lines.push(format!("  hint: {}", printable(hint)));
        }
        lines
    }
}

/// `text` with control characters (terminal escape sequences included) replaced, so that nothing
/// a server sends can move the cursor or recolour the terminal.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '\u{FFFD}' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_problem_prints_one_line_per_field() {
        let body = br#"{"type":"https://userexport.dev/problems/validation","title":"Invalid request",
            "status":422,"detail":"2 fields are invalid",
            "errors":[{"field":"retention_days","code":"too_long","message":"retention_days may be at most 30"},
                      {"field":"user_filters.email_domain","code":"invalid_value","message":"not a domain"}]}"#;
        let problem = Problem::from_body("Unprocessable Entity", body);
        assert_eq!(
            problem.lines(422),
            [
                "Invalid request (422): 2 fields are invalid",
                "  retention_days: retention_days may be at most 30 [too_long]",
                "  user_filters.email_domain: not a domain [invalid_value]",
            ]
        );
    }

    #[test]
    fn a_hint_follows_the_fields() {
        let body = br#"{"type":"x/forbidden","title":"Forbidden","detail":"Needs an operator key.","hint":"Use one."}"#;
        assert_eq!(
            Problem::from_body("Forbidden", body).lines(403),
            ["Forbidden (403): Needs an operator key.", "  hint: Use one."]
        );
    }

    #[test]
    fn a_body_that_is_not_a_problem_shows_the_reason_and_an_excerpt() {
        let problem = Problem::from_body("Bad Gateway", b"<html>upstream down</html>\n");
        assert_eq!(problem.lines(502), ["Bad Gateway (502): <html>upstream down</html>"]);
        let empty = Problem::from_body("Bad Gateway", b"");
        assert_eq!(empty.lines(502), ["Bad Gateway (502)"]);
        let long = Problem::from_body("Bad Gateway", "x".repeat(1000).as_bytes());
        assert_eq!(long.detail.map(|d| d.len()), Some(MAX_BODY_EXCERPT));
    }

    #[test]
    fn a_field_error_without_a_field_or_code_still_reads() {
        let body = br#"{"title":"Invalid request","detail":"d","errors":[{"code":"more_errors","message":"and 3 more"},{"message":"m"}]}"#;
        assert_eq!(
            Problem::from_body("", body).lines(422),
            ["Invalid request (422): d", "  and 3 more [more_errors]", "  m"]
        );
    }

    #[test]
    fn control_characters_from_the_server_are_neutralised() {
        let body = br#"{"title":"Bad\u001b[2J","detail":"line\nbreak"}"#;
        assert_eq!(Problem::from_body("", body).lines(400), ["Bad\u{FFFD}[2J (400): line\u{FFFD}break"]);
    }
}
