//! Which event names a subscription receives.

use std::fmt;

use regex::Regex;

/// Which event names a subscription receives: one exact name, a glob, a regular expression, or all.
///
/// Globs treat `.` as a separator, like subjects in NATS or paths in `globset`:
///
/// | glob | matches | does not match |
/// | --- | --- | --- |
/// | `sql.*` | `sql.query`, `sql.` | `sql`, `sql.query.slow`, `nosql.query` |
/// | `*.created` | `user.created` | `created`, `a.user.created` |
/// | `sql.**` | `sql.query`, `sql.query.slow` | `sql` |
/// | `**.created` | `user.created`, `a.user.created` | `user.created.x` |
/// | `cache.rea?` | `cache.read` | `cache.re`, `cache.reads` |
/// | `\*` | `*` | `x` |
///
/// `*` is any run of characters without a `.`, `**` any run of characters at all, `?` exactly one
/// character that is not a `.`, and `\` makes the next character literal. A glob is compiled to an anchored
/// regular expression, so matching is linear in the name's length whatever the glob.
///
/// Strings convert with `From`: a string containing `*` or `?` becomes a glob, any other string an exact
/// name. A [`Regex`] converts to a regex pattern; it matches if it finds a match anywhere in the name, so
/// anchor it (`^user\.`) to mean a prefix, as in ActiveSupport.
///
/// ```
/// use herald_notify::Pattern;
///
/// assert!(Pattern::from("sql.*").matches("sql.query"));
/// assert!(!Pattern::from("sql.*").matches("sql.query.slow"));
/// assert!(Pattern::regex(r"^user\.").unwrap().matches("user.created"));
/// assert!(Pattern::all().matches("anything"));
/// ```
#[derive(Clone)]
pub struct Pattern {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    All,
    Exact(Box<str>),
    Glob { source: Box<str>, compiled: Regex },
    Regex(Regex),
}

impl Pattern {
    /// Matches every event name.
    pub fn all() -> Self {
        Pattern { kind: Kind::All }
    }

    /// Matches exactly `name`.
    pub fn exact(name: impl Into<String>) -> Self {
        Pattern {
            kind: Kind::Exact(name.into().into_boxed_str()),
        }
    }

    /// Matches names against a glob (see the type's documentation for the syntax).
    pub fn glob(glob: &str) -> Self {
        let mut re = String::with_capacity(glob.len() * 2 + 2);
        re.push_str("(?s)^");
        let mut chars = glob.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    re.push_str(".*");
                }
                '*' => re.push_str("[^.]*"),
                '?' => re.push_str("[^.]"),
                '\\' => {
                    if let Some(next) = chars.next() {
                        re.push_str(&regex::escape(next.encode_utf8(&mut [0; 4])));
                    } else {
                        re.push_str(r"\\");
                    }
                }
                other => re.push_str(&regex::escape(other.encode_utf8(&mut [0; 4]))),
            }
        }
        re.push('$');
        let compiled = Regex::new(&re)
            .unwrap_or_else(|e| unreachable!("glob {glob:?} compiles to a valid regex: {e}"));
        Pattern {
            kind: Kind::Glob {
                source: glob.into(),
                compiled,
            },
        }
    }

    /// Matches names in which `re` finds a match.
    ///
    /// # Errors
    /// When `re` is not a valid regular expression.
    pub fn regex(re: &str) -> Result<Self, regex::Error> {
        Ok(Pattern {
            kind: Kind::Regex(Regex::new(re)?),
        })
    }

    /// Whether the pattern matches `name`.
    pub fn matches(&self, name: &str) -> bool {
        match &self.kind {
            Kind::All => true,
            Kind::Exact(exact) => **exact == *name,
            Kind::Glob { compiled, .. } => compiled.is_match(name),
            Kind::Regex(re) => re.is_match(name),
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::All => f.write_str("Pattern::All"),
            Kind::Exact(s) => write!(f, "Pattern::Exact({s:?})"),
            Kind::Glob { source, .. } => write!(f, "Pattern::Glob({source:?})"),
            Kind::Regex(re) => write!(f, "Pattern::Regex({:?})", re.as_str()),
        }
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Self {
        if s.contains(['*', '?']) {
            Pattern::glob(s)
        } else {
            Pattern::exact(s)
        }
    }
}

impl From<String> for Pattern {
    fn from(s: String) -> Self {
        if s.contains(['*', '?']) {
            Pattern::glob(&s)
        } else {
            Pattern::exact(s)
        }
    }
}

impl From<&String> for Pattern {
    fn from(s: &String) -> Self {
        Pattern::from(s.as_str())
    }
}

impl From<Regex> for Pattern {
    fn from(re: Regex) -> Self {
        Pattern {
            kind: Kind::Regex(re),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_table() {
        // (pattern, name, expected)
        let table: &[(Pattern, &str, bool)] = &[
            (Pattern::from("sql.query"), "sql.query", true),
            (Pattern::from("sql.query"), "sql.query.slow", false),
            (Pattern::from("sql.query"), "sql.quer", false),
            (Pattern::from("sql.query"), "SQL.query", false),
            (Pattern::from("sql.*"), "sql.query", true),
            (Pattern::from("sql.*"), "sql.", true),
            (Pattern::from("sql.*"), "sql", false),
            (Pattern::from("sql.*"), "sql.query.slow", false),
            (Pattern::from("sql.*"), "nosql.query", false),
            (Pattern::from("*.created"), "user.created", true),
            (Pattern::from("*.created"), "created", false),
            (Pattern::from("*.created"), "a.user.created", false),
            (Pattern::from("*.created"), "user.created.later", false),
            (Pattern::from("sql.**"), "sql.query", true),
            (Pattern::from("sql.**"), "sql.query.slow", true),
            (Pattern::from("sql.**"), "sql", false),
            (Pattern::from("**.created"), "a.user.created", true),
            (Pattern::from("**.created"), "user.created.x", false),
            (Pattern::from("**"), "", true),
            (Pattern::from("**"), "a.b.c", true),
            (Pattern::from("*"), "abc", true),
            (Pattern::from("*"), "a.b", false),
            (Pattern::from("cache.rea?"), "cache.read", true),
            (Pattern::from("cache.rea?"), "cache.re", false),
            (Pattern::from("cache.rea?"), "cache.reads", false),
            (Pattern::from("cache.rea?"), "cache.rea.", false),
            (Pattern::from("a*b*c"), "aXXbYYc", true),
            (Pattern::from("a*b*c"), "abc", true),
            (Pattern::from("a*b*c"), "aXbYcZ", false),
            (Pattern::from(r"lit\*"), "lit*", true),
            (Pattern::from(r"lit\*"), "litx", false),
            (Pattern::from("a+b(c).*"), "a+b(c).d", true),
            (Pattern::from("a+b(c).*"), "aab(c).d", false),
            (Pattern::from("émoji.*"), "émoji.🦀", true),
            (Pattern::regex(r"^user\.").unwrap(), "user.created", true),
            (
                Pattern::regex(r"^user\.").unwrap(),
                "superuser.created",
                false,
            ),
            (Pattern::regex(r"created$").unwrap(), "user.created", true),
            (Pattern::regex(r"\d+").unwrap(), "job.42.done", true),
            (Pattern::from(Regex::new("x").unwrap()), "abc", false),
            (Pattern::all(), "", true),
            (Pattern::all(), "anything.at.all", true),
            (Pattern::exact("a*b"), "a*b", true),
            (Pattern::exact("a*b"), "axb", false),
        ];
        for (pattern, name, expected) in table {
            assert_eq!(
                pattern.matches(name),
                *expected,
                "{pattern:?} against {name:?}"
            );
        }
    }

    #[test]
    fn invalid_regex_is_an_error() {
        assert!(Pattern::regex("(").is_err());
    }

    #[test]
    fn debug_shows_source() {
        assert_eq!(
            format!("{:?}", Pattern::from("a.*")),
            r#"Pattern::Glob("a.*")"#
        );
        assert_eq!(
            format!("{:?}", Pattern::from("a.b")),
            r#"Pattern::Exact("a.b")"#
        );
    }
}
