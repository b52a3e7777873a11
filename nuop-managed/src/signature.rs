//! Whether a fetched revision is signed by an allowed key: the decision, from the
//! signature bytes, the signed payload and the allowed signers. Pure: no I/O
//! ([`crate::git::signed_material`] reads the objects, [`crate::signers`] the keys).
//!
//! Only SSH signatures (`gpg.format=ssh`, an SSHSIG in namespace `git`) verify; an
//! OpenPGP or X.509 signature is rejected as such. When the source's ref names an
//! annotated tag, the tag's signature is checked if the tag carries one (the commit
//! then needs none: signing a release tag vouches for the commit it points at); an
//! unsigned annotated tag, a lightweight tag, a branch or a commit id leave the check
//! to the commit's own signature. A tag whose signature fails rejects the revision
//! even if the commit is signed: a bad signature is not ignored (test
//! `a_signed_tag_vouches_for_its_commit_an_unsigned_one_does_not`).

use nuop_crd::signers::{AllowedSigner, GIT_NAMESPACE, fingerprint};

/// One signed (or unsigned) object: its signature as stored, and the bytes it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedObject {
    /// What it is, for messages: `commit <id>` or `tag <name> (<id>)`.
    pub describe: String,
    /// The armored signature (a commit's `gpgsig` header, a tag's trailing block).
    pub signature: Option<Vec<u8>>,
    /// The object's bytes without the signature: what was signed.
    pub payload: Vec<u8>,
}

/// What vouches for a revision: the commit, and the annotated tag the ref names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The commit that would run.
    pub commit: SignedObject,
    /// The annotated tag the source's ref names, when it names one.
    pub tag: Option<SignedObject>,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Signed by an allowed key.
    Verified {
        /// The key's SHA-256 fingerprint (`SHA256:…`).
        fingerprint: String,
        /// What carried the signature ([`SignedObject::describe`]).
        signed: String,
    },
    /// Not to run, and why (naming the object and the key's fingerprint, or
    /// `unsigned`).
    Rejected {
        /// The reason.
        reason: String,
    },
}

const SSH_ARMOR: &[u8] = b"-----BEGIN SSH SIGNATURE-----";
const PGP_ARMOR: &[u8] = b"-----BEGIN PGP SIGNATURE-----";
const X509_ARMOR: &[u8] = b"-----BEGIN SIGNED MESSAGE-----";

/// Decides whether `material` is signed by one of `allowed` (module docs: a signed
/// annotated tag is checked instead of the commit).
pub fn decide(material: &Material, allowed: &[AllowedSigner]) -> Decision {
    match &material.tag {
        Some(tag) if tag.signature.is_some() => verify(tag, allowed),
        Some(tag) => match verify(&material.commit, allowed) {
            Decision::Rejected { reason } => Decision::Rejected {
                reason: format!("{reason}, and {} is unsigned", tag.describe),
            },
            verified => verified,
        },
        None => verify(&material.commit, allowed),
    }
}

/// Whether `object`'s own signature is by one of `allowed`.
pub fn verify(object: &SignedObject, allowed: &[AllowedSigner]) -> Decision {
    let what = &object.describe;
    let reject = |reason: String| Decision::Rejected { reason };
    let Some(armored) = &object.signature else {
        return reject(format!("{what} is unsigned"));
    };
    let armored = trim_start(armored);
    if !armored.starts_with(SSH_ARMOR) {
        let kind = if armored.starts_with(PGP_ARMOR) {
            "an OpenPGP"
        } else if armored.starts_with(X509_ARMOR) {
            "an X.509"
        } else {
            "an unrecognised"
        };
        return reject(format!(
            "{what} has {kind} signature; only SSH signatures (gpg.format=ssh) are verified"
        ));
    }
    let signature = match ssh_key::SshSig::from_pem(armored) {
        Ok(signature) => signature,
        Err(e) => {
            return reject(format!(
                "{what} has an SSH signature that does not decode: {e}"
            ));
        }
    };
    let key = fingerprint(signature.public_key());
    if signature.namespace() != GIT_NAMESPACE {
        return reject(format!(
            "{what} is signed by {key} in namespace `{}`, not `{GIT_NAMESPACE}`",
            signature.namespace()
        ));
    }
    let mut same_key = allowed
        .iter()
        .filter(|s| s.key.key_data() == signature.public_key())
        .peekable();
    if same_key.peek().is_none() {
        return reject(format!(
            "{what} is signed by {key}, which is not an allowed signer"
        ));
    }
    let Some(signer) = same_key.find(|s| s.allows_namespace(GIT_NAMESPACE)) else {
        return reject(format!(
            "{what} is signed by {key}, which is allowed only for other namespaces than `{GIT_NAMESPACE}`"
        ));
    };
    match signer
        .key
        .verify(GIT_NAMESPACE, &object.payload, &signature)
    {
        Ok(()) => Decision::Verified {
            fingerprint: key,
            signed: what.clone(),
        },
        Err(e) => reject(format!(
            "{what} carries a signature by {key} that does not verify ({e}): the object is not what was signed"
        )),
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use nuop_crd::signers::parse_line;

    /// Made once with ssh-keygen (`-Y sign -n git`, and `-n file` for `a-file.sig`)
    /// over `payload`.
    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("testdata/signing/", $name))
        };
    }

    fn signer(line: &str) -> AllowedSigner {
        parse_line(line).expect("parses").expect("a signer")
    }

    fn object(signature: Option<&str>, payload: &str) -> SignedObject {
        SignedObject {
            describe: "commit c0ffee".into(),
            signature: signature.map(|s| s.as_bytes().to_vec()),
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn rejected(decision: Decision) -> String {
        match decision {
            Decision::Rejected { reason } => reason,
            Decision::Verified { .. } => panic!("verified: {decision:?}"),
        }
    }

    #[test]
    fn an_allowed_key_verifies_and_names_its_fingerprint() {
        let a = signer(fixture!("a.pub"));
        let allowed = [signer(fixture!("b.pub")), a.clone()];
        let decision = verify(
            &object(Some(fixture!("a.sig")), fixture!("payload")),
            &allowed,
        );
        assert_eq!(
            decision,
            Decision::Verified {
                fingerprint: a.fingerprint(),
                signed: "commit c0ffee".into()
            }
        );
    }

    #[test]
    fn every_supported_key_type_verifies() {
        for (key, sig) in [
            (fixture!("a.pub"), fixture!("a.sig")),
            (fixture!("rsa.pub"), fixture!("rsa.sig")),
            (fixture!("ecdsa.pub"), fixture!("ecdsa.sig")),
        ] {
            let decision = verify(&object(Some(sig), fixture!("payload")), &[signer(key)]);
            assert!(
                matches!(decision, Decision::Verified { .. }),
                "{key}: {decision:?}"
            );
        }
    }

    #[test]
    fn unsigned_unknown_tampered_and_foreign_signatures_are_rejected() {
        let a = signer(fixture!("a.pub"));
        let b = signer(fixture!("b.pub"));
        let payload = fixture!("payload");

        let reason = rejected(verify(&object(None, payload), std::slice::from_ref(&a)));
        assert_eq!(reason, "commit c0ffee is unsigned");

        let reason = rejected(verify(
            &object(Some(fixture!("a.sig")), payload),
            std::slice::from_ref(&b),
        ));
        assert_eq!(
            reason,
            format!(
                "commit c0ffee is signed by {}, which is not an allowed signer",
                a.fingerprint()
            )
        );

        let tampered = payload.replace("signed", "changed");
        let reason = rejected(verify(
            &object(Some(fixture!("a.sig")), &tampered),
            std::slice::from_ref(&a),
        ));
        assert!(
            reason.contains(&a.fingerprint()) && reason.contains("does not verify"),
            "{reason}"
        );

        let reason = rejected(verify(
            &object(Some(fixture!("a-file.sig")), payload),
            std::slice::from_ref(&a),
        ));
        assert!(
            reason.contains("in namespace `file`, not `git`"),
            "{reason}"
        );

        let limited = signer(&format!("a namespaces=\"file\" {}", fixture!("a.pub")));
        let reason = rejected(verify(
            &object(Some(fixture!("a.sig")), payload),
            &[limited],
        ));
        assert!(
            reason.contains("allowed only for other namespaces"),
            "{reason}"
        );

        let pgp = "-----BEGIN PGP SIGNATURE-----\n\niQEz\n-----END PGP SIGNATURE-----\n";
        let reason = rejected(verify(
            &object(Some(pgp), payload),
            std::slice::from_ref(&a),
        ));
        assert!(
            reason.contains("an OpenPGP signature; only SSH"),
            "{reason}"
        );

        let garbled = "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n";
        let reason = rejected(verify(
            &object(Some(garbled), payload),
            std::slice::from_ref(&a),
        ));
        assert!(reason.contains("does not decode"), "{reason}");

        let reason = rejected(verify(&object(Some(fixture!("a.sig")), payload), &[]));
        assert!(reason.contains("not an allowed signer"), "{reason}");
    }

    #[test]
    fn a_signed_tag_vouches_for_its_commit_an_unsigned_one_does_not() {
        let a = signer(fixture!("a.pub"));
        let payload = fixture!("payload");
        let tag = |signature: Option<&str>, payload: &str| SignedObject {
            describe: "tag v1 (7a9)".into(),
            ..object(signature, payload)
        };
        let allowed = std::slice::from_ref(&a);
        // The tag is signed: the unsigned commit does not matter.
        let signed_tag = Material {
            commit: object(None, "another payload"),
            tag: Some(tag(Some(fixture!("a.sig")), payload)),
        };
        assert_eq!(
            decide(&signed_tag, allowed),
            Decision::Verified {
                fingerprint: a.fingerprint(),
                signed: "tag v1 (7a9)".into()
            }
        );
        // A bad tag signature is not rescued by a good commit signature.
        let bad_tag = Material {
            commit: object(Some(fixture!("a.sig")), payload),
            tag: Some(tag(Some(fixture!("a.sig")), "changed")),
        };
        assert!(
            rejected(decide(&bad_tag, allowed)).starts_with("tag v1 (7a9) carries a signature")
        );
        // An unsigned tag leaves it to the commit.
        let unsigned_tag = Material {
            commit: object(Some(fixture!("a.sig")), payload),
            tag: Some(tag(None, "x")),
        };
        assert!(
            matches!(decide(&unsigned_tag, allowed), Decision::Verified { signed, .. } if signed == "commit c0ffee")
        );
        let neither = Material {
            commit: object(None, payload),
            tag: Some(tag(None, "x")),
        };
        assert_eq!(
            rejected(decide(&neither, allowed)),
            "commit c0ffee is unsigned, and tag v1 (7a9) is unsigned"
        );
        let branch = Material {
            commit: object(None, payload),
            tag: None,
        };
        assert_eq!(
            rejected(decide(&branch, allowed)),
            "commit c0ffee is unsigned"
        );
    }
}
