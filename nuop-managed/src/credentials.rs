//! Credentials for a source: where the values of its Secret references come from, and a
//! type that never prints them. Does I/O (reads files, gets Secrets).
//!
//! The configuration only names Secrets ([`nuop_crd::SecretKeyRef`]). Each value is read
//! when a fetch needs it (so a rotated Secret applies at the next sync), first from a
//! mounted file `<secrets dir>/<secret>/<key>`, else from the Secret itself through the
//! API in the NuOperator's namespace. Never from environment variables: the scripts
//! inherit this process's environment. The values live only in memory, are handed to
//! gix's credentials callback, and print as `***`.

use std::fmt;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use nuop_crd::SecretKeyRef;

/// The user name sent with a token (git hosts ignore it; some want one).
pub const TOKEN_USERNAME: &str = "x-access-token";

/// A username and password (or token) for basic authentication. Debug and Display
/// show neither.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    /// Basic credentials.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A token, sent as the password with [`TOKEN_USERNAME`].
    pub fn token(token: impl Into<String>) -> Self {
        Self::basic(TOKEN_USERNAME, token)
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password or token. Never log it.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// A Secret value that could not be read. Names the Secret and key, never a value.
#[derive(Debug, thiserror::Error)]
#[error("cannot read key `{key}` of Secret `{secret}`: {reason}")]
pub struct CredentialError {
    /// The Secret's name.
    pub secret: String,
    /// The key.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

/// Where Secret values are read from.
#[derive(Clone)]
pub struct SecretReader {
    /// Directory of mounted Secrets (`<dir>/<secret>/<key>`), checked first.
    pub dir: Option<PathBuf>,
    /// A client and the namespace to get Secrets from, when the file is absent.
    pub api: Option<(Client, String)>,
}

impl SecretReader {
    /// Resolves a source's credentials; `None` when it has none.
    ///
    /// # Errors
    /// [`CredentialError`] when a referenced value cannot be read.
    pub async fn resolve(
        &self,
        credentials: Option<&nuop_crd::Credentials>,
    ) -> Result<Option<Credentials>, CredentialError> {
        let Some(c) = credentials else {
            return Ok(None);
        };
        if let Some(token) = &c.token {
            return Ok(Some(Credentials::token(self.read(token).await?)));
        }
        match (&c.username, &c.password) {
            (Some(u), Some(p)) => Ok(Some(Credentials::basic(
                self.read(u).await?,
                self.read(p).await?,
            ))),
            _ => Ok(None),
        }
    }

    async fn read(&self, reference: &SecretKeyRef) -> Result<String, CredentialError> {
        let error = |reason: String| CredentialError {
            secret: reference.name.clone(),
            key: reference.key.clone(),
            reason,
        };
        if let Some(dir) = &self.dir {
            let path = dir.join(&reference.name).join(&reference.key);
            match tokio::fs::read_to_string(&path).await {
                Ok(value) => return Ok(value.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(error(format!("reading {}: {e}", path.display()))),
            }
        }
        let Some((client, namespace)) = &self.api else {
            return Err(error("no mounted file and no API access".into()));
        };
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(&reference.name)
            .await
            .map_err(|e| error(format!("getting it in namespace {namespace}: {e}")))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&reference.key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&reference.key))
                    .map(|s| s.clone().into_bytes())
            })
            .ok_or_else(|| error("no such key".into()))?;
        String::from_utf8(bytes)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|_| error("the value is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_come_from_mounted_files_and_never_print() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("git")).expect("mkdir");
        std::fs::write(dir.path().join("git/token"), "t0ken-value\n").expect("write");
        let reader = SecretReader {
            dir: Some(dir.path().to_path_buf()),
            api: None,
        };
        let token = nuop_crd::Credentials {
            token: Some(SecretKeyRef::new("git", "token")),
            ..Default::default()
        };
        let resolved = reader
            .resolve(Some(&token))
            .await
            .expect("resolves")
            .expect("some");
        assert_eq!(resolved.password(), "t0ken-value");
        assert_eq!(resolved.username(), TOKEN_USERNAME);
        assert!(!format!("{resolved:?}").contains("t0ken"));
        assert_eq!(reader.resolve(None).await.expect("none"), None);

        let missing = nuop_crd::Credentials {
            token: Some(SecretKeyRef::new("git", "other")),
            ..Default::default()
        };
        let err = reader.resolve(Some(&missing)).await.expect_err("missing");
        assert!(err.to_string().contains("`other` of Secret `git`"), "{err}");
    }
}
