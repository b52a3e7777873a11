//! The allowed signers of a signed source: its inline `allowedSigners` plus the
//! allowed-signers file in its `allowedSignersConfigMap`. Does I/O (gets the
//! ConfigMap).
//!
//! The ConfigMap is read each time a new commit is to be verified, so adding or
//! removing a key applies at the next sync without a restart, and a commit rejected for
//! an unknown key is accepted once its key is added (test
//! `keys_rotate_through_the_config_map_without_a_gap` in `tests/managed.rs`). Keys are
//! public: they come from a ConfigMap (the CRD has no Secret reference for them).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use nuop_crd::SshVerify;
use nuop_crd::signers::{AllowedSigner, parse_file};

/// Where the ConfigMaps of allowed signers are read from.
#[derive(Clone)]
pub struct SignerReader {
    /// A client and the NuOperator's namespace; `None` when there is no API access
    /// (then only inline signers can be used).
    pub api: Option<(Client, String)>,
}

impl SignerReader {
    /// Every allowed signer of `ssh`: inline entries, then the ConfigMap's lines.
    ///
    /// # Errors
    /// A message naming the entry or ConfigMap key and line that does not parse, a
    /// ConfigMap that cannot be read, or a set that ends up empty. These are problems
    /// of the configuration, not of a commit: the caller counts them as failures.
    pub async fn allowed(&self, ssh: &SshVerify) -> Result<Vec<AllowedSigner>, String> {
        let mut allowed = Vec::new();
        for (index, entry) in ssh.allowed_signers.iter().enumerate() {
            let parsed = parse_file(entry)
                .map_err(|e| format!("verify.ssh.allowedSigners[{index}]: {e}"))?;
            allowed.extend(parsed);
        }
        if let Some(reference) = &ssh.allowed_signers_config_map {
            let what = format!("key `{}` of ConfigMap `{}`", reference.key, reference.name);
            let Some((client, namespace)) = &self.api else {
                return Err(format!(
                    "cannot read the allowed signers in {what}: no API access"
                ));
            };
            let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get(&reference.name)
                .await
                .map_err(|e| {
                    format!(
                        "cannot read the allowed signers in {what} (namespace {namespace}): {e}"
                    )
                })?;
            let text = config_map
                .data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .ok_or_else(|| format!("the allowed signers' {what} does not exist"))?;
            allowed
                .extend(parse_file(text).map_err(|e| format!("allowed signers in {what}: {e}"))?);
        }
        if allowed.is_empty() {
            return Err(
                "verify.ssh lists no allowed signer: no commit of this source can run".into(),
            );
        }
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("testdata/signing/a.pub");

    #[tokio::test]
    async fn inline_signers_parse_and_bad_or_missing_ones_are_named() {
        let reader = SignerReader { api: None };
        let ssh = |entries: &[&str]| SshVerify {
            allowed_signers: entries.iter().map(|e| (*e).to_string()).collect(),
            allowed_signers_config_map: None,
        };
        assert_eq!(reader.allowed(&ssh(&[KEY])).await.expect("parses").len(), 1);
        let err = reader
            .allowed(&ssh(&[KEY, "alice nonsense"]))
            .await
            .expect_err("bad entry");
        assert!(
            err.starts_with("verify.ssh.allowedSigners[1]: line 1: no public key"),
            "{err}"
        );
        let err = reader
            .allowed(&ssh(&["# only a comment"]))
            .await
            .expect_err("empty");
        assert!(err.contains("no allowed signer"), "{err}");
        let from_map = SshVerify {
            allowed_signers: Vec::new(),
            allowed_signers_config_map: Some(nuop_crd::ConfigMapKeyRef {
                name: "signers".into(),
                key: "allowed_signers".into(),
            }),
        };
        let err = reader.allowed(&from_map).await.expect_err("no API");
        assert!(
            err.contains("key `allowed_signers` of ConfigMap `signers`"),
            "{err}"
        );
    }
}
