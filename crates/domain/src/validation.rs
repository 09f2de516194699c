//! Validation errors that report every failing field, not just the first, up to a cap: a hostile
//! body can fail thousands of times (`{"fields":[0,0,...]}`), and the answer must stay small.

use std::fmt;

use serde::Serialize;

/// One field that failed validation. `field` is a dotted path (`user_filters.status[1]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    /// Stable machine-readable reason (`unknown_field`, `invalid_value`, `required`...).
    pub code: &'static str,
    pub message: String,
}

/// Errors kept with their field and message; any beyond are only counted.
pub const MAX_LISTED_ERRORS: usize = 20;

/// All the reasons a request was rejected. Never empty when returned as an error. The first
/// [`MAX_LISTED_ERRORS`] are kept, the rest only counted ([`ValidationErrors::omitted`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    listed: Vec<FieldError>,
    omitted: usize,
}

impl ValidationErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn single(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        let mut errors = Self::new();
        errors.add(field, code, message);
        errors
    }

    pub fn add(&mut self, field: impl Into<String>, code: &'static str, message: impl Into<String>) {
        if self.listed.len() < MAX_LISTED_ERRORS {
            self.listed.push(FieldError { field: field.into(), code, message: message.into() });
        } else {
            self.omitted += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// Every error found, listed or not.
    pub fn len(&self) -> usize {
        self.listed.len() + self.omitted
    }

    /// The listed errors (at most [`MAX_LISTED_ERRORS`]).
    pub fn errors(&self) -> &[FieldError] {
        &self.listed
    }

    /// Errors found beyond the listed ones.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// Adds `inner`'s errors (and count of omitted ones) with their fields under `prefix`
    /// (`request` + `format` = `request.format`; an empty field becomes `prefix`).
    pub fn extend_nested(&mut self, prefix: &str, inner: ValidationErrors) {
        for e in inner.listed {
            let field = if e.field.is_empty() { prefix.to_owned() } else { format!("{prefix}.{}", e.field) };
            self.add(field, e.code, e.message);
        }
        self.omitted += inner.omitted;
    }

    /// The value of `result`, or `None` with its errors added to these (so a request's parts
    /// are all validated before any error is reported).
    pub fn absorb<T>(&mut self, result: Result<T, ValidationErrors>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(errors) => {
                for e in errors.listed {
                    self.add(e.field, e.code, e.message);
                }
                self.omitted += errors.omitted;
                None
            }
        }
    }

    /// `Ok(value)` when nothing was recorded, the collected errors otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.listed.is_empty() { Ok(value) } else { Err(self) }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.listed.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        write!(f, "invalid request: {}", parts.join("; "))?;
        if self.omitted > 0 {
            write!(f, "; and {} more", self.omitted)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorb_keeps_values_and_collects_errors_in_order() {
        let mut errors = ValidationErrors::single("a", "required", "a is required");
        assert_eq!(errors.absorb(Ok::<_, ValidationErrors>(7)), Some(7));
        let failed: Result<u8, _> = Err(ValidationErrors::single("b.c", "invalid_value", "bad"));
        assert_eq!(errors.absorb(failed), None);
        let fields: Vec<_> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["a", "b.c"]);
    }

    #[test]
    fn errors_beyond_the_cap_are_counted_not_kept() {
        let mut errors = ValidationErrors::new();
        for i in 0..1000 {
            errors.add(format!("fields[{i}]"), "unknown_field", "unknown field");
        }
        assert_eq!(errors.errors().len(), MAX_LISTED_ERRORS);
        assert_eq!((errors.len(), errors.omitted()), (1000, 1000 - MAX_LISTED_ERRORS));
        assert!(errors.to_string().ends_with("; and 980 more"), "{errors}");

        let mut outer = ValidationErrors::single("cron", "required", "cron is required");
        outer.extend_nested("request", errors.clone());
        assert_eq!((outer.errors().len(), outer.len()), (MAX_LISTED_ERRORS, 1001));
        assert_eq!(outer.errors()[1].field, "request.fields[0]");
        let mut absorbed = ValidationErrors::new();
        assert_eq!(absorbed.absorb(Err::<(), _>(errors)), None);
        assert_eq!(absorbed.len(), 1000);
    }
}
