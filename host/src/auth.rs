//! API tokens: who may call the API, with which scopes, on which functions.
//!
//! Tokens come from a file (`--auth-tokens`, YAML or JSON) that holds only their SHA-256
//! digests: `tokens: [{name, sha256, scopes: [admin|deploy|invoke], functions: [pattern…]}]`.
//! A request's `Authorization: Bearer <token>` is hashed and looked up; the digest is what is
//! compared, so the lookup's timing tells nothing about a token's text. The file is re-read when
//! it changes (polled, and on SIGHUP); a file that no longer parses keeps the tokens in force.
//! Without a file, authentication is off and every caller is an admin — the host then serves
//! on loopback only (see [`crate::config::Config::check_exposure`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything.
    Admin,
    /// Register, update and delete functions; read their full specs.
    Deploy,
    /// Invoke and enqueue, read executions.
    Invoke,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
        }
    }
}

/// What one caller may do: its scopes, on the functions its patterns match.
#[derive(Debug)]
pub struct Grant {
    pub name: String,
    scopes: Vec<Scope>,
    /// `None`: every function.
    functions: Option<Vec<glob::Pattern>>,
}

impl Grant {
    /// The caller when authentication is off (one shared value: no allocation per request).
    pub fn anyone() -> Arc<Self> {
        static ANYONE: std::sync::OnceLock<Arc<Grant>> = std::sync::OnceLock::new();
        ANYONE
            .get_or_init(|| Arc::new(Self { name: "anonymous".into(), scopes: vec![Scope::Admin], functions: None }))
            .clone()
    }

    /// Whether the grant covers `function` at all (patterns only).
    pub fn covers(&self, function: &str) -> bool {
        self.functions.as_ref().is_none_or(|patterns| patterns.iter().any(|p| p.matches(function)))
    }

    /// Whether the grant has `scope` (or admin) on `function`.
    pub fn allows(&self, scope: Scope, function: &str) -> bool {
        self.scopes.iter().any(|s| *s == scope || *s == Scope::Admin) && self.covers(function)
    }

    /// Whether the grant may see `function` at all (any scope on it).
    pub fn sees(&self, function: &str) -> bool {
        !self.scopes.is_empty() && self.covers(function)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
    #[serde(default)]
    functions: Option<Vec<String>>,
}

/// The tokens of one version of the file, by digest.
#[derive(Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Arc<Grant>>,
}

impl Tokens {
    /// Parses a token file (YAML, of which JSON is a subset), naming the entry at fault.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut by_digest = HashMap::new();
        for (i, entry) in file.tokens.into_iter().enumerate() {
            let at = format!("tokens[{i}] (`{}`)", entry.name);
            let digest = hex::decode(entry.sha256.trim())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| format!("{at}: sha256 must be 64 hex digits (the SHA-256 of the token)"))?;
            if entry.scopes.is_empty() {
                return Err(format!("{at}: scopes must name at least one of admin, deploy, invoke"));
            }
            let functions = match entry.functions {
                None => None,
                Some(patterns) => Some(
                    patterns
                        .iter()
                        .map(|p| glob::Pattern::new(p).map_err(|e| format!("{at}: functions pattern `{p}`: {e}")))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let grant = Arc::new(Grant { name: entry.name, scopes: entry.scopes, functions });
            if by_digest.insert(digest, grant).is_some() {
                return Err(format!("{at}: the same token digest is listed twice"));
            }
        }
        Ok(Self { by_digest })
    }

    fn lookup(&self, token: &str) -> Option<Arc<Grant>> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest.get(&digest).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// Why a request is not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is not in the file: 401.
    Unauthenticated,
}

/// The host's authentication: off, or the tokens of a file (reloadable).
pub struct Auth {
    file: Option<PathBuf>,
    current: RwLock<(Arc<Tokens>, Vec<u8>)>,
}

impl Auth {
    /// Authentication off: every caller is an admin.
    pub fn off() -> Self {
        Self { file: None, current: RwLock::new((Arc::new(Tokens::default()), Vec::new())) }
    }

    /// The tokens of `path`; an unreadable or invalid file is an error (the host does not start).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let tokens = parse_bytes(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { file: Some(path.to_path_buf()), current: RwLock::new((Arc::new(tokens), text)) })
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Re-reads the file if its content changed. `Ok(true)`: new tokens are in force;
    /// `Err`: the file is unreadable or invalid and the previous tokens stay.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.file else { return Ok(false) };
        let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if self.current.read().expect("auth lock").1 == text {
            return Ok(false);
        }
        let tokens = parse_bytes(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        *self.current.write().expect("auth lock") = (Arc::new(tokens), text);
        Ok(true)
    }

    /// Tokens in force.
    pub fn count(&self) -> usize {
        self.current.read().expect("auth lock").0.len()
    }

    /// The caller of a request with this bearer token (if any).
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Arc<Grant>, Denied> {
        if !self.enabled() {
            return Ok(Grant::anyone());
        }
        let tokens = self.current.read().expect("auth lock").0.clone();
        bearer.filter(|t| !t.is_empty()).and_then(|t| tokens.lookup(t)).ok_or(Denied::Unauthenticated)
    }
}

fn parse_bytes(bytes: &[u8]) -> Result<Tokens, String> {
    Tokens::parse(std::str::from_utf8(bytes).map_err(|_| "the token file is not UTF-8".to_string())?)
}

/// The digest to write in a token file for `token` (lower-case hex SHA-256).
pub fn digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &str) -> String {
        format!("tokens:\n{entries}")
    }

    #[test]
    fn scopes_and_patterns_decide() {
        let text = file(&format!(
            "  - {{name: ci, sha256: {}, scopes: [deploy, invoke], functions: ['team-a-*']}}\n  \
             - {{name: ops, sha256: {}, scopes: [admin]}}\n  \
             - {{name: app, sha256: {}, scopes: [invoke]}}\n",
            digest_hex("ci-token"),
            digest_hex("ops-token"),
            digest_hex("app-token"),
        ));
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 3);
        let ci = tokens.lookup("ci-token").unwrap();
        assert_eq!(ci.name, "ci");
        assert!(ci.allows(Scope::Deploy, "team-a-x"));
        assert!(ci.allows(Scope::Invoke, "team-a-x"));
        assert!(!ci.allows(Scope::Deploy, "team-b-x"));
        assert!(!ci.sees("team-b-x"));
        let ops = tokens.lookup("ops-token").unwrap();
        assert!(ops.allows(Scope::Deploy, "anything") && ops.allows(Scope::Invoke, "anything"));
        let app = tokens.lookup("app-token").unwrap();
        assert!(app.allows(Scope::Invoke, "x") && !app.allows(Scope::Deploy, "x"));
        assert!(tokens.lookup("nope").is_none());
        assert!(tokens.lookup("ci-token ").is_none(), "exact text only");
    }

    #[test]
    fn json_files_parse_too_and_errors_name_the_entry() {
        let json = format!(r#"{{"tokens":[{{"name":"a","sha256":"{}","scopes":["invoke"]}}]}}"#, digest_hex("t"));
        assert_eq!(Tokens::parse(&json).unwrap().len(), 1);
        let e = Tokens::parse(&file("  - {name: bad, sha256: abc, scopes: [invoke]}\n")).err().unwrap();
        assert!(e.contains("tokens[0] (`bad`)") && e.contains("64 hex"), "{e}");
        let e =
            Tokens::parse(&file(&format!("  - {{name: n, sha256: {}, scopes: []}}\n", digest_hex("t")))).err().unwrap();
        assert!(e.contains("scopes"), "{e}");
        let e = Tokens::parse(&file(&format!("  - {{name: n, sha256: {}, scopes: [root]}}\n", digest_hex("t"))))
            .err()
            .unwrap();
        assert!(e.contains("root"), "{e}");
        let twice = format!(
            "  - {{name: a, sha256: {d}, scopes: [invoke]}}\n  - {{name: b, sha256: {d}, scopes: [admin]}}\n",
            d = digest_hex("t")
        );
        assert!(Tokens::parse(&file(&twice)).err().unwrap().contains("twice"));
    }

    #[test]
    fn reload_takes_a_changed_file_and_keeps_tokens_when_it_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let one = file(&format!("  - {{name: a, sha256: {}, scopes: [invoke]}}\n", digest_hex("first")));
        std::fs::write(&path, &one).unwrap();
        let auth = Auth::from_file(&path).unwrap();
        assert!(auth.authenticate(Some("first")).is_ok());
        assert_eq!(auth.authenticate(None).unwrap_err(), Denied::Unauthenticated);
        assert_eq!(auth.reload(), Ok(false), "unchanged");
        let two = file(&format!("  - {{name: b, sha256: {}, scopes: [invoke]}}\n", digest_hex("second")));
        std::fs::write(&path, &two).unwrap();
        assert_eq!(auth.reload(), Ok(true));
        assert!(auth.authenticate(Some("first")).is_err());
        assert!(auth.authenticate(Some("second")).is_ok());
        std::fs::write(&path, "tokens: [oops").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.authenticate(Some("second")).is_ok(), "a broken file keeps the tokens in force");
        assert!(Auth::off().authenticate(None).unwrap().allows(Scope::Deploy, "x"));
    }
}
