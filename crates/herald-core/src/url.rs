//! The one parser of database URLs (`sqlite://`, `postgres://`, `memory://`). The CLI, the server, every
//! backend and every component that keeps tables next to the events read the same URL the same way through
//! [`DatabaseUrl`]: the `url` crate parses it once, and this module adds what it does not know — that the
//! authority of a `sqlite://` URL is the start of a relative path, and that query options are Herald settings
//! with types and limits.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// Longest database URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 4096;

/// Which backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `sqlite://PATH`: a SQLite file.
    Sqlite,
    /// `postgres://` or `postgresql://`: a PostgreSQL server.
    Postgres,
    /// `memory://`: in-process, gone with the process.
    Memory,
}

impl Scheme {
    /// The scheme as written in a URL (`postgresql` is spelled `postgres`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Sqlite => "sqlite",
            Scheme::Postgres => "postgres",
            Scheme::Memory => "memory",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed database URL: its scheme, where the database is, and its query options, read through typed
/// accessors that name the option and its limits when a value is bad.
///
/// | URL | means |
/// | --- | --- |
/// | `sqlite://herald.db`, `sqlite://data/herald.db` | the file `herald.db`, `data/herald.db`, relative to the working directory |
/// | `sqlite:///var/lib/herald.db` | the absolute path `/var/lib/herald.db` |
/// | `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, `postgresql://…` | a PostgreSQL database |
/// | `memory://` | an in-memory store |
///
/// Options follow `?` as `name=value` pairs joined by `&`, percent-encoded like any URL query. In a SQLite
/// path, write `%20` for a space, `%3F` for `?` and `%23` for `#`; the first segment of a relative path (what
/// a URL parser sees as the host) cannot hold `:` or `@`.
///
/// ```
/// use herald_core::url::{DatabaseUrl, Scheme};
///
/// let url: DatabaseUrl = "sqlite://shop.db?durability=normal&read_connections=2".parse()?;
/// assert_eq!(url.scheme(), Scheme::Sqlite);
/// assert_eq!(url.path(), Some(std::path::Path::new("shop.db")));
/// assert_eq!(url.option("durability")?, Some("normal"));
/// assert_eq!(url.option_in("read_connections", 1..=64usize)?, Some(2));
///
/// let pg: DatabaseUrl = "postgres://app:s3cret@db.internal:5433/orders?schema=app".parse()?;
/// assert_eq!((pg.host(), pg.port(), pg.database().as_deref()), (Some("db.internal"), Some(5433), Some("orders")));
/// assert_eq!(pg.to_string(), "postgres://app:***@db.internal:5433/orders?schema=app");
/// # Ok::<(), herald_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    url: ::url::Url,
    scheme: Scheme,
    /// The file of a `sqlite://` URL, percent-decoded.
    path: Option<PathBuf>,
    /// The query's pairs, decoded, in order.
    options: Vec<(String, String)>,
}

impl DatabaseUrl {
    /// Parses `input`; anything that is not a `sqlite://`, `postgres://`/`postgresql://` or `memory://` URL
    /// naming a database is [`Error::InvalidInput`].
    pub fn parse(input: &str) -> Result<Self> {
        if input.len() > MAX_URL_LEN {
            return Err(Error::invalid(format!(
                "database URL is {} bytes long; at most {MAX_URL_LEN} are accepted",
                input.len()
            )));
        }
        let bad = |why: &str| {
            Error::invalid(format!(
                "database URL `{}` {why}",
                escape(&redact_unparsed(input))
            ))
        };
        let url = ::url::Url::parse(input).map_err(|e| {
            bad(&format!(
                "is not a URL ({e}); use sqlite://PATH, postgres://USER@HOST/DB or memory://"
            ))
        })?;
        let scheme = match url.scheme() {
            "sqlite" => Scheme::Sqlite,
            "postgres" | "postgresql" => Scheme::Postgres,
            "memory" => Scheme::Memory,
            other => {
                return Err(bad(&format!(
                    "has scheme `{other}`; use sqlite://PATH, postgres://USER@HOST/DB or memory://"
                )));
            }
        };
        if url.cannot_be_a_base() {
            return Err(bad(&format!("lacks `//`: write {scheme}://…")));
        }
        if url.fragment().is_some() {
            return Err(bad(
                "has a `#` fragment; write `#` in a path or value as %23",
            ));
        }
        let path = match scheme {
            Scheme::Sqlite => Some(sqlite_path(&url).map_err(|why| bad(&why))?),
            Scheme::Memory => {
                if url.host_str().is_some_and(|h| !h.is_empty()) || !url.path().is_empty() {
                    return Err(bad(
                        "names a path; an in-memory store has none (use memory://)",
                    ));
                }
                None
            }
            Scheme::Postgres => None,
        };
        let options = url.query_pairs().into_owned().collect();
        Ok(DatabaseUrl {
            url,
            scheme,
            path,
            options,
        })
    }

    /// Which backend the URL names.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The SQLite file (`sqlite://` only), percent-decoded; relative paths are relative to the working
    /// directory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The server's host (`postgres://` only; `None` when the URL leaves it to the driver's default).
    pub fn host(&self) -> Option<&str> {
        match self.scheme {
            Scheme::Postgres => self.url.host_str().filter(|h| !h.is_empty()),
            Scheme::Sqlite | Scheme::Memory => None,
        }
    }

    /// The server's port, when given.
    pub fn port(&self) -> Option<u16> {
        self.url.port()
    }

    /// The user name, percent-decoded, when given.
    pub fn user(&self) -> Option<String> {
        Some(self.url.username())
            .filter(|u| !u.is_empty())
            .map(decode_lossy)
    }

    /// The password, percent-decoded, when given. Never printed: [`Display`](fmt::Display) shows `***`.
    pub fn password(&self) -> Option<String> {
        self.url.password().map(decode_lossy)
    }

    /// The database name (`postgres://…/DB`), percent-decoded, when given.
    pub fn database(&self) -> Option<String> {
        match self.scheme {
            Scheme::Postgres => Some(self.url.path().trim_start_matches('/'))
                .filter(|d| !d.is_empty())
                .map(decode_lossy),
            Scheme::Sqlite | Scheme::Memory => None,
        }
    }

    /// Every query option, decoded, in the order written.
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    /// The value of option `name`, if given. Given twice is [`Error::InvalidInput`]: which one was meant is
    /// not clear.
    pub fn option(&self, name: &str) -> Result<Option<&str>> {
        let mut values = self.options.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(self.invalid(format!("option {} is given more than once", escape(name))));
        }
        Ok(first)
    }

    /// Option `name` parsed by `T`'s [`FromStr`] (whose error says what is accepted), if given.
    pub fn option_parsed<T: FromStr<Err = Error>>(&self, name: &str) -> Result<Option<T>> {
        self.option(name)?
            .map(|value| {
                value.parse::<T>().map_err(|e| {
                    let why = match e {
                        Error::InvalidInput(m) => m,
                        other => other.to_string(),
                    };
                    self.invalid(format!("option {}: {why}", escape(name)))
                })
            })
            .transpose()
    }

    /// Numeric option `name`, if given, which must lie in `range`; out of range or not a number is
    /// [`Error::InvalidInput`] naming the option and its limits.
    pub fn option_in<T>(&self, name: &str, range: RangeInclusive<T>) -> Result<Option<T>>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(value) = self.option(name)? else {
            return Ok(None);
        };
        let limits = || format!("{} to {}", range.start(), range.end());
        let number = value.parse::<T>().map_err(|_| {
            self.invalid(format!(
                "option {} is `{}`, not a number from {}",
                escape(name),
                escape(value),
                limits()
            ))
        })?;
        match out_of_range(name, number, &range) {
            Some(why) => Err(self.invalid(why)),
            None => Ok(Some(number)),
        }
    }

    /// Refuses options not in `known`, so a misspelt option is an error, not a silent default.
    pub fn check_options(&self, known: &[&str]) -> Result<()> {
        match self
            .options
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            Some((unknown, _)) => Err(self.invalid(format!(
                "unknown option {} (known: {})",
                escape(unknown),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))),
            None => Ok(()),
        }
    }

    /// The URL as written (normalised by the parser) without the options in `names`, for handing the rest to
    /// a driver: the other options stay byte for byte. Contains the password.
    pub fn without_options(&self, names: &[&str]) -> String {
        let mut url = self.url.clone();
        let kept: Vec<&str> = self
            .url
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|piece| !piece.is_empty())
            .filter(|piece| {
                let key = ::url::form_urlencoded::parse(piece.as_bytes())
                    .next()
                    .map(|(k, _)| k.into_owned())
                    .unwrap_or_default();
                !names.contains(&key.as_str())
            })
            .collect();
        url.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
        url.into()
    }

    /// The URL as parsed, password included: for drivers, never for messages (use `Display`).
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// An [`Error::InvalidInput`] about this URL: the message names it (password hidden) first.
    pub fn invalid(&self, why: impl fmt::Display) -> Error {
        Error::invalid(format!("database URL `{self}`: {why}"))
    }
}

impl FromStr for DatabaseUrl {
    type Err = Error;
    fn from_str(input: &str) -> Result<Self> {
        DatabaseUrl::parse(input)
    }
}

/// The URL with its password replaced by `***` and control characters escaped: safe to log and echo.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        if shown.password().is_some() {
            // Cannot fail: a URL that has a password can have another.
            let _ = shown.set_password(Some("***"));
        }
        f.write_str(&escape(shown.as_str()))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.to_string())
            .finish()
    }
}

/// Checks that setting `name` lies in `range`; otherwise [`Error::InvalidInput`] naming the setting, its
/// limits and the value. Configuration builders and URL options share it, so a limit reads the same
/// wherever it is hit.
pub fn check_range<T>(name: &str, value: T, range: RangeInclusive<T>) -> Result<T>
where
    T: PartialOrd + fmt::Display + Copy,
{
    match out_of_range(name, value, &range) {
        Some(why) => Err(Error::invalid(why)),
        None => Ok(value),
    }
}

fn out_of_range<T>(name: &str, value: T, range: &RangeInclusive<T>) -> Option<String>
where
    T: PartialOrd + fmt::Display,
{
    (!range.contains(&value)).then(|| {
        format!(
            "{} must be from {} to {} (got {value})",
            escape(name),
            range.start(),
            range.end()
        )
    })
}

/// `s` with control characters escaped (`\n`, `\u{1b}`), so echoed input cannot forge log lines or
/// terminal sequences; everything else is kept as typed.
pub fn escape(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The file a `sqlite://` URL names: the parser's host is the first segment of a relative path (empty for an
/// absolute one), so the path is host + path, percent-decoded.
fn sqlite_path(url: &::url::Url) -> std::result::Result<PathBuf, String> {
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(
            "has a user, password or port, which a file path cannot have (`@` and `:` are not allowed in \
             the first segment of a relative path; use sqlite://./PATH or an absolute sqlite:///PATH)"
                .to_owned(),
        );
    }
    let raw = format!("{}{}", url.host_str().unwrap_or(""), url.path());
    let path = percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .map_err(|_| "names a path that is not UTF-8 once decoded".to_owned())?;
    if path.is_empty() || path == "/" {
        return Err("names no file (try sqlite://herald.db)".to_owned());
    }
    if path.contains('\0') {
        return Err("names a path containing NUL".to_owned());
    }
    Ok(PathBuf::from(path.into_owned()))
}

fn decode_lossy(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `input` with any user info (`user:password@`) masked, for messages about a URL that did not parse: the
/// password may be in it, and the parser could not say where.
fn redact_unparsed(input: &str) -> String {
    let Some((scheme, rest)) = input.split_once("://") else {
        return input.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => input.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> DatabaseUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        match DatabaseUrl::parse(s) {
            Err(Error::InvalidInput(m)) => m,
            Err(other) => panic!("{s}: not invalid input: {other}"),
            Ok(u) => panic!("{s}: parsed as {u:?}"),
        }
    }

    #[test]
    fn sqlite_paths_relative_and_absolute() {
        for (url, path) in [
            ("sqlite://herald.db", "herald.db"),
            ("sqlite://shop.db?durability=normal", "shop.db"),
            ("sqlite://data/h.db", "data/h.db"),
            ("sqlite://./x.db", "./x.db"),
            ("sqlite://../a/b.db", "../a/b.db"),
            ("sqlite://Shop.DB", "Shop.DB"),
            ("sqlite:///var/lib/herald.db", "/var/lib/herald.db"),
            (
                "sqlite:///tmp/.tmpAbC/herald.db?max_batch=3",
                "/tmp/.tmpAbC/herald.db",
            ),
            ("sqlite://dir/my%20db.db", "dir/my db.db"),
            ("sqlite://dir/what%3F.db", "dir/what?.db"),
            ("SQLITE://x.db", "x.db"),
        ] {
            let u = parse(url);
            assert_eq!(u.scheme(), Scheme::Sqlite, "{url}");
            assert_eq!(u.path(), Some(Path::new(path)), "{url}");
            assert_eq!((u.host(), u.database()), (None, None), "{url}");
        }
        assert_eq!(
            parse("sqlite://shop.db?durability=normal").options(),
            [("durability".to_owned(), "normal".to_owned())]
        );
    }

    #[test]
    fn postgres_parts() {
        let u =
            parse("postgresql://app:p%40ss@db.internal:5433/my%20db?schema=s&connect_timeout=3");
        assert_eq!(u.scheme(), Scheme::Postgres);
        assert_eq!(u.host(), Some("db.internal"));
        assert_eq!(u.port(), Some(5433));
        assert_eq!(u.user().as_deref(), Some("app"));
        assert_eq!(u.password().as_deref(), Some("p@ss"));
        assert_eq!(u.database().as_deref(), Some("my db"));
        assert_eq!(u.path(), None);
        assert_eq!(u.option("schema").unwrap(), Some("s"));
        let bare = parse("postgres://h/db");
        assert_eq!(
            (bare.user(), bare.password(), bare.port()),
            (None, None, None)
        );
        assert_eq!(parse("postgres://[::1]:5432/db").host(), Some("[::1]"));
        assert_eq!(parse("memory://").scheme(), Scheme::Memory);
    }

    #[test]
    fn bad_urls_are_invalid_input() {
        for (url, needle) in [
            ("", "is not a URL"),
            ("herald.db", "is not a URL"),
            ("mysql://h/db", "scheme `mysql`"),
            ("sqlite:x.db", "lacks `//`"),
            ("sqlite://", "names no file"),
            ("sqlite:///", "names no file"),
            ("sqlite://x.db#frag", "fragment"),
            ("sqlite://me@x.db", "user, password or port"),
            ("sqlite://a:12/x.db", "user, password or port"),
            ("sqlite://my db.db", "is not a URL"),
            ("sqlite://x%00.db", "NUL"),
            ("sqlite://x%FF.db", "not UTF-8"),
            ("memory://herald.db", "has none"),
        ] {
            let m = err(url);
            assert!(m.contains(needle), "{url}: {m}");
        }
        assert!(err(&format!("sqlite://{}", "a".repeat(MAX_URL_LEN))).contains("at most 4096"));
    }

    #[test]
    fn options_are_typed_and_bounded() {
        let u = parse("sqlite://x.db?n=5&big=99&word=abc&neg=-1&twice=1&twice=2&flag");
        assert_eq!(u.option_in("n", 1..=64usize).unwrap(), Some(5));
        assert_eq!(u.option_in("absent", 1..=64usize).unwrap(), None);
        let m = u.option_in("big", 1..=64usize).unwrap_err().to_string();
        assert!(m.contains("big must be from 1 to 64 (got 99)"), "{m}");
        assert!(m.contains("sqlite://x.db?"), "names the URL: {m}");
        let m = u.option_in("word", 1..=64usize).unwrap_err().to_string();
        assert!(
            m.contains("option word is `abc`, not a number from 1 to 64"),
            "{m}"
        );
        assert!(u.option_in("neg", 1..=64usize).is_err());
        let m = u.option("twice").unwrap_err().to_string();
        assert!(m.contains("more than once"), "{m}");
        assert_eq!(u.option("flag").unwrap(), Some(""));
        let m = u.check_options(&["n", "big"]).unwrap_err().to_string();
        assert!(m.contains("unknown option word (known: n, big)"), "{m}");
        assert!(parse("sqlite://x.db?n=1").check_options(&["n"]).is_ok());
        assert!(matches!(
            u.option_in("big", 1..=64usize),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn parsed_options_keep_the_type_s_message() {
        #[derive(Debug)]
        struct Mode;
        impl FromStr for Mode {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    "on" => Ok(Mode),
                    _ => Err(Error::invalid(format!("mode `{s}` is not `on`"))),
                }
            }
        }
        let u = parse("sqlite://x.db?mode=off&ok=on");
        let m = u.option_parsed::<Mode>("mode").unwrap_err().to_string();
        assert!(m.ends_with("option mode: mode `off` is not `on`"), "{m}");
        assert!(u.option_parsed::<Mode>("ok").unwrap().is_some());
        assert!(u.option_parsed::<Mode>("absent").unwrap().is_none());
    }

    #[test]
    fn echoed_input_is_escaped_and_passwords_hidden() {
        let m = err("mysql://u:hunter2@h/db\n\x1b[31m");
        assert!(!m.contains("hunter2"), "{m}");
        assert!(!m.contains('\n') && !m.contains('\x1b'), "{m}");
        let m = err("postgres://u:hunter2@h:notaport/db");
        assert!(!m.contains("hunter2"), "{m}");
        let u = parse("postgres://u:hunter2@h/db?x=%0A");
        assert_eq!(u.to_string(), "postgres://u:***@h/db?x=%0A");
        assert!(!format!("{u:?}").contains("hunter2"));
        let m = u.option_in("x", 1..=2u32).unwrap_err().to_string();
        assert!(
            m.contains(r"`\n`") && !m.contains('\n') && !m.contains("hunter2"),
            "{m}"
        );
        let m = parse("sqlite://x.db?a%0Ab=1")
            .check_options(&[])
            .unwrap_err()
            .to_string();
        assert!(m.contains(r"a\nb") && !m.contains('\n'), "{m}");
        assert_eq!(escape("plain ü"), "plain ü");
    }

    #[test]
    fn without_options_keeps_the_rest_byte_for_byte() {
        let u = parse(
            "postgresql://u:p%40ss@h/db?connect_timeout=3&schema=s_1&options=-c%20x%3Dy&max_batch=9&application_name=x",
        );
        assert_eq!(
            u.without_options(&["schema", "max_batch", "pool_size"]),
            "postgresql://u:p%40ss@h/db?connect_timeout=3&options=-c%20x%3Dy&application_name=x"
        );
        assert_eq!(
            parse("postgres://h/db?schema=x").without_options(&["schema"]),
            "postgres://h/db"
        );
    }

    #[test]
    fn check_range_names_the_setting_and_its_limits() {
        assert_eq!(check_range("pool_size", 8, 1..=256).unwrap(), 8);
        let m = check_range("pool_size", 0, 1..=256)
            .unwrap_err()
            .to_string();
        assert_eq!(m, "invalid input: pool_size must be from 1 to 256 (got 0)");
    }
}
