//! Allowed signers: the public keys whose SSH signatures a signed source accepts
//! (`spec.sources[].verify.ssh`), parsed from lines in the format of git's
//! `gpg.ssh.allowedSignersFile` (ssh-keygen(1), "ALLOWED SIGNERS"). Pure: no I/O.
//!
//! Shared by the manager's validation (so a bad line is reported in the NuOperator's
//! status, naming the entry, before any pod runs) and the managed pods (which parse
//! the ConfigMap's file at each sync).
//!
//! A line is `[principals] [options] <key type> <base64 key> [comment]`; the principals
//! may be left out (a plain `ssh-ed25519 AAAA… comment` line, as in a `.pub` file), and
//! `#` starts a comment line. Principals are kept for messages but do not restrict
//! anything: git's own check does not tie them to the committer either. Of the
//! options, `namespaces="…"` is honoured (a key limited to other namespaces than `git`
//! does not verify a commit: test
//! `unsigned_unknown_tampered_and_foreign_signatures_are_rejected` in nuop-managed); `cert-authority`, `valid-after` and `valid-before` are
//! refused, not ignored, because ignoring them would accept what they exclude.

use std::fmt;

/// The namespace git signs commits and tags in (`ssh-keygen -Y sign -n git`).
pub const GIT_NAMESPACE: &str = "git";

/// The key types a signature may be verified with: what git users sign with
/// (ssh-keygen's default ed25519, RSA, ECDSA P-256, and their FIDO variants). The
/// managed pods' `ssh-key` features must cover every one (test
/// `every_supported_key_type_verifies` in nuop-managed's `signature.rs`).
pub const SUPPORTED_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Key types OpenSSH knows that nuop does not verify with.
const UNSUPPORTED_KEY_TYPES: &[&str] = &["ssh-dss", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"];

/// One allowed signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedSigner {
    /// The principals column, when given (for messages only).
    pub principals: Option<String>,
    /// The namespaces the key may sign in (`namespaces="…"`); `None`: any.
    pub namespaces: Option<Vec<String>>,
    /// The public key.
    pub key: ssh_key::PublicKey,
}

impl AllowedSigner {
    /// The key's SHA-256 fingerprint as ssh-keygen prints it (`SHA256:…`).
    pub fn fingerprint(&self) -> String {
        fingerprint(self.key.key_data())
    }

    /// Whether the signer may sign in `namespace`.
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == namespace))
    }
}

/// The SHA-256 fingerprint of `key` as ssh-keygen prints it (`SHA256:…`).
pub fn fingerprint(key: &ssh_key::public::KeyData) -> String {
    ssh_key::Fingerprint::new(ssh_key::HashAlg::Sha256, key).to_string()
}

/// A line that is not an allowed signer, with the reason. Public keys are not secret:
/// the message may quote the line's key type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SignerError {
    /// The line's number (1-based) in a file, or the entry's index in a list.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SignerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses one allowed-signers line: `Ok(None)` for a blank or comment line.
///
/// # Errors
/// A message saying what is wrong: no key, an unsupported key type or option, a key
/// that does not decode.
pub fn parse_line(line: &str) -> Result<Option<AllowedSigner>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let tokens = split_outside_quotes(line, |c| c.is_ascii_whitespace());
    let Some(at) = tokens
        .iter()
        .position(|t| SUPPORTED_KEY_TYPES.contains(t) || UNSUPPORTED_KEY_TYPES.contains(t))
    else {
        return Err(format!(
            "no public key (expected `[principals] [options] <type> <base64 key>`, type one of {})",
            SUPPORTED_KEY_TYPES.join(", ")
        ));
    };
    let key_type = tokens[at];
    if UNSUPPORTED_KEY_TYPES.contains(&key_type) {
        return Err(format!(
            "key type {key_type} is not supported (supported: {})",
            SUPPORTED_KEY_TYPES.join(", ")
        ));
    }
    let (principals, options) = match at {
        0 => (None, None),
        1 => (Some(tokens[0]), None),
        2 => (Some(tokens[0]), Some(tokens[1])),
        _ => {
            return Err(format!(
                "expected at most principals and options before the key type {key_type}"
            ));
        }
    };
    let namespaces = match options {
        Some(options) => parse_options(options)?,
        None => None,
    };
    let Some(data) = tokens.get(at + 1) else {
        return Err(format!("the {key_type} key has no base64 data"));
    };
    let key = ssh_key::PublicKey::from_openssh(&format!("{key_type} {data}"))
        .map_err(|e| format!("the {key_type} key does not decode: {e}"))?;
    Ok(Some(AllowedSigner {
        principals: principals.map(str::to_string),
        namespaces,
        key,
    }))
}

/// Parses an allowed-signers file, one signer per line.
///
/// # Errors
/// The first line that is not a signer, a blank line or a comment.
pub fn parse_file(text: &str) -> Result<Vec<AllowedSigner>, SignerError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(signer)) => out.push(signer),
            Ok(None) => {}
            Err(message) => {
                return Err(SignerError {
                    line: index + 1,
                    message,
                });
            }
        }
    }
    Ok(out)
}

/// The `namespaces` of an options column; refuses the options nuop cannot honour.
fn parse_options(options: &str) -> Result<Option<Vec<String>>, String> {
    let mut namespaces = None;
    for option in split_outside_quotes(options, |c| c == ',') {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        match name.to_ascii_lowercase().as_str() {
            "namespaces" => {
                let list = value.trim_matches('"');
                namespaces = Some(
                    list.split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            }
            "cert-authority" | "valid-after" | "valid-before" => {
                return Err(format!(
                    "option `{name}` is not supported (only `namespaces` is); list the signing keys themselves"
                ));
            }
            _ => return Err(format!("unknown option `{name}`")),
        }
    }
    Ok(namespaces)
}

/// Splits `text` at characters `at` says are separators, except inside double quotes;
/// empty pieces are dropped.
fn split_outside_quotes(text: &str, at: impl Fn(char) -> bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && at(c) {
            if i > start {
                out.push(&text[start..i]);
            }
            start = i + c.len_utf8();
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIAYVVbKE1oiMdLmuq4BUanmmDRdN2bIWSQeDMScdpHst";

    #[test]
    fn every_form_of_line_parses() {
        let plain = parse_line(&format!("ssh-ed25519 {KEY} alice@laptop"))
            .expect("parses")
            .expect("a signer");
        assert_eq!(plain.principals, None);
        assert!(plain.allows_namespace("git"));
        assert!(
            plain.fingerprint().starts_with("SHA256:"),
            "{}",
            plain.fingerprint()
        );

        let full = parse_line(&format!(
            "alice@example.com,bob@example.com namespaces=\"git,file\" ssh-ed25519 {KEY} a comment"
        ))
        .expect("parses")
        .expect("a signer");
        assert_eq!(
            full.principals.as_deref(),
            Some("alice@example.com,bob@example.com")
        );
        assert_eq!(
            full.namespaces,
            Some(vec!["git".to_string(), "file".to_string()])
        );
        assert_eq!(full.key, plain.key);

        let other = parse_line(&format!("alice namespaces=\"file\" ssh-ed25519 {KEY}"))
            .expect("parses")
            .expect("a signer");
        assert!(!other.allows_namespace(GIT_NAMESPACE));

        assert_eq!(parse_line("  # a comment").expect("parses"), None);
        assert_eq!(parse_line("   ").expect("parses"), None);
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases = [
            ("alice@example.com", "no public key"),
            ("ssh-ed25519", "has no base64 data"),
            ("ssh-ed25519 AAAAnotakey", "does not decode"),
            (&format!("ssh-dss {KEY}"), "ssh-dss is not supported"),
            (
                &format!("alice valid-after=\"20260101\" ssh-ed25519 {KEY}"),
                "`valid-after` is not supported",
            ),
            (
                &format!("alice cert-authority ssh-ed25519 {KEY}"),
                "`cert-authority` is not supported",
            ),
            (
                &format!("alice frobnicate ssh-ed25519 {KEY}"),
                "unknown option `frobnicate`",
            ),
            (
                &format!("a b c ssh-ed25519 {KEY}"),
                "at most principals and options",
            ),
        ];
        for (line, expected) in cases {
            let err = parse_line(line).expect_err(line);
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn a_file_names_its_bad_line() {
        let text = format!("# team keys\nssh-ed25519 {KEY} a\n\nnot a key\n");
        let err = parse_file(&text).expect_err("line 4 is bad");
        assert_eq!(err.line, 4);
        assert!(
            err.to_string().starts_with("line 4: no public key"),
            "{err}"
        );
        let ok = parse_file(&format!(
            "ssh-ed25519 {KEY} a\n# x\nbob ssh-ed25519 {KEY}\n"
        ))
        .expect("parses");
        assert_eq!(ok.len(), 2);
    }
}
