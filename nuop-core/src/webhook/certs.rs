//! The webhook server's TLS certificate: where it comes from, when it is renewed, and
//! the CA bundle the API server must trust.
//!
//! Two sources ([`CertSource`]):
//! - **self-signed** (the default): nuop keeps a CA and a serving certificate in one
//!   Secret (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`, with the validity times in
//!   annotations so no X.509 parser is needed). Every replica serves the same CA: the
//!   first creates the Secret, a replica that loses the create race (409) reads the
//!   winner's. The serving certificate is renewed at 2/3 of its lifetime and the CA at
//!   2/3 of its own; a new CA enters the bundle next to the old one before anything it
//!   signed is served, so no request fails across a rotation.
//! - **dir**: a mounted directory with `tls.crt`/`tls.key` (and optionally `ca.crt`), as
//!   cert-manager or a kubelet-mounted Secret provides; re-read when the files change.
//!
//! The certificate is swapped under the running server through a
//! [`rustls::server::ResolvesServerCert`], so neither rotation needs a restart.
//!
//! The rotation decision ([`decide`]) and the Secret's layout ([`Material`]) are pure;
//! [`Certs::start`] and [`reconcile_secret`] do the I/O (one Secret, or the directory).
//! Key material is never logged: log lines name the Secret or directory and the
//! validity times only.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The serving certificate's lifetime when none is configured (the CA lives
/// [`CA_LIFETIME_FACTOR`] times as long).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How many serving lifetimes the CA lives. More than 3 so that at the CA's 2/3 point
/// the old CA can still sign one full serving certificate (see [`decide`]).
pub const CA_LIFETIME_FACTOR: u32 = 4;

/// Annotation: the serving certificate's not-after (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "nuop.dev/not-after";
/// Annotation: when the serving certificate was issued (RFC 3339).
pub const ISSUED_AT_ANNOTATION: &str = "nuop.dev/issued-at";
/// Annotation: the serving certificate's names, comma-separated, to re-issue on change.
pub const SANS_ANNOTATION: &str = "nuop.dev/subject-alt-names";
/// Annotation: the current CA's not-after (RFC 3339).
pub const CA_NOT_AFTER_ANNOTATION: &str = "nuop.dev/ca-not-after";
/// Annotation: when the current CA was issued (RFC 3339).
pub const CA_ISSUED_AT_ANNOTATION: &str = "nuop.dev/ca-issued-at";
/// Annotation: the current CA's common name (the issuer name of what it signs).
pub const CA_NAME_ANNOTATION: &str = "nuop.dev/ca-name";
/// Annotation: when the previous CA, still in `ca.crt` after a CA rotation, expires.
pub const PREVIOUS_CA_NOT_AFTER_ANNOTATION: &str = "nuop.dev/previous-ca-not-after";

/// Label on the Secret saying nuop manages it (a Secret without it is never replaced).
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "nuop");

/// Certificates are valid from this long before issue, for clock skew between the
/// issuing replica and the API server.
const BACKDATE_SECONDS: i64 = 60;

/// How often a cert directory is re-read (kubelet swaps mounted Secrets atomically).
const DIR_POLL: Duration = Duration::from_secs(2);

/// Where the webhook server's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// nuop keeps a CA + serving cert in Secret `namespace/name` (keys ca.crt, ca.key,
    /// tls.crt, tls.key), creating it if absent (409 → read the winner's), rotating the
    /// serving cert (and the CA before its own expiry) without a restart.
    SelfSigned {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// DNS names of the serving certificate (e.g. `svc.ns.svc`).
        dns_names: Vec<String>,
        /// IP addresses of the serving certificate (e.g. `127.0.0.1` for local runs).
        ip_addresses: Vec<IpAddr>,
        /// The serving certificate's lifetime; the CA lives [`CA_LIFETIME_FACTOR`] times
        /// as long.
        validity: Duration,
    },
    /// A mounted directory with tls.crt/tls.key (and optionally ca.crt), as cert-manager
    /// provides; re-read when the files change. nuop manages no configuration then.
    Dir(PathBuf),
}

/// What went wrong loading, creating or renewing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A request about the certificate Secret failed.
    #[error("failed to {action} webhook certificate Secret {namespace}/{name}: {source}")]
    Kube {
        /// What was being done (read, create, update).
        action: &'static str,
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The API error (boxed: it is large, and errors should be cheap to return).
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret exists but nuop does not manage it, so it is left alone.
    #[error(
        "webhook certificate Secret {namespace}/{name} exists but is not managed by nuop \
         (label app.kubernetes.io/managed-by=nuop missing); delete it or choose another name"
    )]
    Foreign {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// Generating a key or certificate failed.
    #[error("failed to generate the webhook {what}: {source}")]
    Generate {
        /// Which certificate (CA, serving certificate).
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A file of a cert directory could not be read.
    #[error("failed to read webhook certificate file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Certificate or key data is not usable.
    #[error("invalid webhook certificate in {place}: {reason}")]
    Invalid {
        /// Where the data came from (a file, a Secret key).
        place: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The call needs the self-signed source (e.g. [`reconcile_secret`] given a dir).
    #[error("{0} needs the self-signed certificate source")]
    NotSelfSigned(&'static str),
    /// The self-signed source needs a kube client.
    #[error("the self-signed webhook certificate source needs a Kubernetes client")]
    NoClient,
}

impl CertError {
    /// A bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Foreign { .. } => "foreign_secret",
            Self::Generate { .. } => "generate",
            Self::Read { .. } => "read",
            Self::Invalid { .. } => "invalid",
            Self::NotSelfSigned(_) | Self::NoClient => "config",
        }
    }
}

/// When a certificate was issued and when it expires, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Issue time (not-before is earlier by a skew margin).
    pub issued_at: i64,
    /// Not-after.
    pub not_after: i64,
}

impl Lifetime {
    /// The point at 2/3 of the lifetime, where the certificate is renewed.
    pub fn renew_at(&self) -> i64 {
        self.issued_at + (self.not_after - self.issued_at) * 2 / 3
    }
}

/// The content of the certificate Secret, as plain data.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    /// The CAs the API server must trust, PEM: the current CA first, then the previous
    /// one while it is still in its overlap.
    pub ca_bundle: String,
    /// The current CA's private key, PEM.
    pub ca_key: String,
    /// The current CA's common name.
    pub ca_name: String,
    /// The current CA's lifetime.
    pub ca: Lifetime,
    /// When the previous CA (second in `ca_bundle`) expires, if it is still there.
    pub previous_ca_not_after: Option<i64>,
    /// The serving certificate, PEM.
    pub tls_crt: String,
    /// The serving certificate's private key, PEM.
    pub tls_key: String,
    /// The serving certificate's lifetime.
    pub serving: Lifetime,
    /// The serving certificate's names, comma-separated (see [`sans_key`]).
    pub sans: String,
}

// Key material stays out of Debug output (and so out of any log line or panic).
impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("ca_name", &self.ca_name)
            .field("ca", &self.ca)
            .field("previous_ca_not_after", &self.previous_ca_not_after)
            .field("serving", &self.serving)
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

/// What the certificate Secret needs next (see [`decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Nothing until `until` (Unix seconds).
    Keep {
        /// The next time a decision may differ.
        until: i64,
    },
    /// Issue a new serving certificate from the current CA.
    RenewServing,
    /// Make a new CA and put it in the bundle beside the old one, and re-issue the
    /// serving certificate from the old CA, so nothing the new CA signs is served before
    /// the API server has had a whole serving lifetime to learn the new bundle.
    RotateCa,
    /// Drop the expired previous CA from the bundle.
    DropPreviousCa,
    /// Start over with a new CA and serving certificate (the CA has expired).
    Recreate,
}

/// Decides what the Secret needs at `now` (Unix seconds), given what it holds and the
/// names the serving certificate must carry. Pure.
///
/// Order: an expired CA means starting over; a CA past 2/3 of its life is rotated
/// (which also renews the serving certificate); a serving certificate past 2/3 of its
/// life, or with other names than wanted, is renewed; an expired previous CA is
/// dropped from the bundle.
pub fn decide(material: &Material, wanted_sans: &str, now: i64) -> Rotation {
    if now >= material.ca.not_after {
        return Rotation::Recreate;
    }
    if now >= material.ca.renew_at() {
        return Rotation::RotateCa;
    }
    if now >= material.serving.renew_at() || material.sans != wanted_sans {
        return Rotation::RenewServing;
    }
    if let Some(previous) = material.previous_ca_not_after
        && now >= previous
    {
        return Rotation::DropPreviousCa;
    }
    let until = [
        Some(material.ca.renew_at()),
        Some(material.serving.renew_at()),
        material.previous_ca_not_after,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(material.ca.renew_at());
    Rotation::Keep { until }
}

/// The canonical form of a serving certificate's names, as kept in [`SANS_ANNOTATION`].
pub fn sans_key(dns_names: &[String], ip_addresses: &[IpAddr]) -> String {
    let mut names: Vec<String> = dns_names.to_vec();
    names.extend(ip_addresses.iter().map(ToString::to_string));
    names.sort();
    names.dedup();
    names.join(",")
}

/// What a certificate needs to be issued.
struct Want<'a> {
    dns_names: &'a [String],
    ip_addresses: &'a [IpAddr],
    validity: i64,
}

impl Want<'_> {
    fn ca_validity(&self) -> i64 {
        self.validity * i64::from(CA_LIFETIME_FACTOR)
    }
}

fn generate_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Generate { what, source }
}

fn offset_time(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The CA's parameters; the same function rebuilds them to sign with a stored CA key, so
/// the issuer name and key usages of what it signs match the CA certificate.
fn ca_params(name: &str, lifetime: Lifetime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset_time(lifetime.issued_at - BACKDATE_SECONDS);
    params.not_after = offset_time(lifetime.not_after);
    params
}

/// A new CA: (certificate PEM, key PEM, name, lifetime).
fn new_ca(now: i64, want: &Want<'_>) -> Result<(String, String, String, Lifetime), CertError> {
    let lifetime = Lifetime {
        issued_at: now,
        not_after: now + want.ca_validity(),
    };
    // Unique per CA, so two CAs side by side in the bundle are told apart by name.
    let name = format!("nuop-webhook-ca-{now}");
    let key = KeyPair::generate().map_err(generate_error("CA key"))?;
    let cert = ca_params(&name, lifetime)
        .self_signed(&key)
        .map_err(generate_error("CA certificate"))?;
    Ok((cert.pem(), key.serialize_pem(), name, lifetime))
}

/// A serving certificate signed by the CA (`ca_key`, `ca_name`), expiring after the
/// wanted validity or with the CA, whichever is first: (certificate PEM, key PEM,
/// lifetime).
fn new_serving(
    now: i64,
    want: &Want<'_>,
    ca_key: &str,
    ca_name: &str,
    ca: Lifetime,
) -> Result<(String, String, Lifetime), CertError> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(|e| CertError::Invalid {
        place: "the CA key (ca.key)".into(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(ca_name, ca), ca_key);
    let lifetime = Lifetime {
        issued_at: now,
        not_after: (now + want.validity).min(ca.not_after),
    };
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        want.dns_names
            .first()
            .cloned()
            .unwrap_or_else(|| "nuop-webhook".into()),
    );
    params.distinguished_name = dn;
    for dns in want.dns_names {
        let name = dns
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| CertError::Invalid {
                place: "the serving certificate's DNS names".into(),
                reason: format!("{dns:?}: {e}"),
            })?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params
        .subject_alt_names
        .extend(want.ip_addresses.iter().copied().map(SanType::IpAddress));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = offset_time(now - BACKDATE_SECONDS);
    params.not_after = offset_time(lifetime.not_after);
    let key = KeyPair::generate().map_err(generate_error("serving key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generate_error("serving certificate"))?;
    Ok((cert.pem(), key.serialize_pem(), lifetime))
}

/// A fresh CA and serving certificate.
fn fresh(now: i64, want: &Want<'_>) -> Result<Material, CertError> {
    let (ca_crt, ca_key, ca_name, ca) = new_ca(now, want)?;
    let (tls_crt, tls_key, serving) = new_serving(now, want, &ca_key, &ca_name, ca)?;
    Ok(Material {
        ca_bundle: ca_crt,
        ca_key,
        ca_name,
        ca,
        previous_ca_not_after: None,
        tls_crt,
        tls_key,
        serving,
        sans: sans_key(want.dns_names, want.ip_addresses),
    })
}

/// The PEM blocks of a bundle, each with its END line.
fn pem_blocks(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .map(str::trim)
        .filter(|block| block.ends_with(END))
        .map(|block| format!("{block}\n"))
        .collect()
}

/// Carries out `rotation` on `material` at `now`; `None` for [`Rotation::Keep`].
fn rotate(
    material: &Material,
    rotation: Rotation,
    now: i64,
    want: &Want<'_>,
) -> Result<Option<Material>, CertError> {
    let sans = sans_key(want.dns_names, want.ip_addresses);
    Ok(Some(match rotation {
        Rotation::Keep { .. } => return Ok(None),
        Rotation::Recreate => fresh(now, want)?,
        Rotation::RenewServing => {
            let (tls_crt, tls_key, serving) =
                new_serving(now, want, &material.ca_key, &material.ca_name, material.ca)?;
            Material {
                tls_crt,
                tls_key,
                serving,
                sans,
                ..material.clone()
            }
        }
        Rotation::RotateCa => {
            let (ca_crt, ca_key, ca_name, ca) = new_ca(now, want)?;
            // Still signed by the old CA, which the API server already trusts; the next
            // renewal, 2/3 of a serving lifetime from now, uses the new one.
            let (tls_crt, tls_key, serving) =
                new_serving(now, want, &material.ca_key, &material.ca_name, material.ca)?;
            let old_ca = pem_blocks(&material.ca_bundle)
                .into_iter()
                .next()
                .unwrap_or_default();
            Material {
                ca_bundle: format!("{ca_crt}{old_ca}"),
                ca_key,
                ca_name,
                ca,
                previous_ca_not_after: Some(material.ca.not_after),
                tls_crt,
                tls_key,
                serving,
                sans,
            }
        }
        Rotation::DropPreviousCa => Material {
            ca_bundle: pem_blocks(&material.ca_bundle)
                .into_iter()
                .next()
                .unwrap_or_default(),
            previous_ca_not_after: None,
            ..material.clone()
        },
    }))
}

fn parse_time(annotations: &BTreeMap<String, String>, key: &str) -> Result<i64, String> {
    let value = annotations
        .get(key)
        .ok_or_else(|| format!("annotation {key} is missing"))?;
    value
        .parse::<Timestamp>()
        .map(|t| t.as_second())
        .map_err(|e| format!("annotation {key}={value:?} is not an RFC 3339 time: {e}"))
}

impl Material {
    /// The Secret holding this material (type `kubernetes.io/tls`, labelled as nuop's).
    pub fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let mut annotations = BTreeMap::from([
            (NOT_AFTER_ANNOTATION.into(), rfc3339(self.serving.not_after)),
            (ISSUED_AT_ANNOTATION.into(), rfc3339(self.serving.issued_at)),
            (SANS_ANNOTATION.into(), self.sans.clone()),
            (CA_NOT_AFTER_ANNOTATION.into(), rfc3339(self.ca.not_after)),
            (CA_ISSUED_AT_ANNOTATION.into(), rfc3339(self.ca.issued_at)),
            (CA_NAME_ANNOTATION.into(), self.ca_name.clone()),
        ]);
        if let Some(previous) = self.previous_ca_not_after {
            annotations.insert(PREVIOUS_CA_NOT_AFTER_ANNOTATION.into(), rfc3339(previous));
        }
        let data = [
            ("ca.crt", &self.ca_bundle),
            ("ca.key", &self.ca_key),
            ("tls.crt", &self.tls_crt),
            ("tls.key", &self.tls_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_string(),
                    MANAGED_BY.1.to_string(),
                )])),
                annotations: Some(annotations),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// Reads the material back from a Secret written by [`Material::to_secret`].
    ///
    /// # Errors
    /// A message naming the missing or malformed key or annotation.
    pub fn from_secret(secret: &Secret) -> Result<Material, String> {
        let empty = BTreeMap::new();
        let annotations = secret.metadata.annotations.as_ref().unwrap_or(&empty);
        let data = secret.data.as_ref();
        let key = |k: &str| -> Result<String, String> {
            let bytes = data
                .and_then(|d| d.get(k))
                .ok_or_else(|| format!("key {k} is missing"))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| format!("key {k} is not PEM text"))
        };
        let previous_ca_not_after = if annotations.contains_key(PREVIOUS_CA_NOT_AFTER_ANNOTATION) {
            Some(parse_time(annotations, PREVIOUS_CA_NOT_AFTER_ANNOTATION)?)
        } else {
            None
        };
        Ok(Material {
            ca_bundle: key("ca.crt")?,
            ca_key: key("ca.key")?,
            ca_name: annotations
                .get(CA_NAME_ANNOTATION)
                .cloned()
                .ok_or_else(|| format!("annotation {CA_NAME_ANNOTATION} is missing"))?,
            ca: Lifetime {
                issued_at: parse_time(annotations, CA_ISSUED_AT_ANNOTATION)?,
                not_after: parse_time(annotations, CA_NOT_AFTER_ANNOTATION)?,
            },
            previous_ca_not_after,
            tls_crt: key("tls.crt")?,
            tls_key: key("tls.key")?,
            serving: Lifetime {
                issued_at: parse_time(annotations, ISSUED_AT_ANNOTATION)?,
                not_after: parse_time(annotations, NOT_AFTER_ANNOTATION)?,
            },
            sans: annotations
                .get(SANS_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
        })
    }
}

/// Builds the rustls key from PEM; `place` names where it came from in errors.
fn certified_key(cert_pem: &[u8], key_pem: &[u8], place: &str) -> Result<CertifiedKey, CertError> {
    let invalid = |reason: String| CertError::Invalid {
        place: place.to_string(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("tls.crt holds no certificate".into()));
    }
    // The error of a key parse never carries the key's bytes.
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid(format!("tls.key: {e}")))?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| invalid(format!("tls.crt and tls.key: {e}")))
}

/// Always hands out the current certificate; [`Certs`] swaps it on rotation.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Resolver {
    fn set(&self, key: CertifiedKey) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(key);
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The webhook server's live certificate and CA bundle.
pub struct Certs {
    resolver: Arc<Resolver>,
    server_config: Arc<rustls::ServerConfig>,
    ca_bundle: watch::Receiver<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").finish_non_exhaustive()
    }
}

impl Certs {
    /// Loads or creates the certificate and spawns the rotation / file-watch task, which
    /// stops when `shutdown` is cancelled.
    ///
    /// # Errors
    /// [`CertError`]: the Secret cannot be read or written, is not nuop's, or a cert
    /// directory's files are missing or invalid.
    pub async fn start(
        client: Option<Client>,
        source: CertSource,
        shutdown: CancellationToken,
    ) -> Result<Certs, CertError> {
        match source {
            CertSource::SelfSigned {
                namespace,
                name,
                dns_names,
                ip_addresses,
                validity,
            } => {
                let client = client.ok_or(CertError::NoClient)?;
                let secret = SecretRef {
                    api: Api::namespaced(client, &namespace),
                    namespace,
                    name,
                };
                let want = WantOwned {
                    dns_names,
                    ip_addresses,
                    validity: validity_seconds(validity),
                };
                let (material, until) = secret.sync(&want.borrow(), now()).await?;
                let key = certified_key(
                    material.tls_crt.as_bytes(),
                    material.tls_key.as_bytes(),
                    &secret.place(),
                )?;
                let (tx, rx) = watch::channel(Some(material.ca_bundle.clone().into_bytes()));
                let certs = Certs::new(key, rx);
                let resolver = certs.resolver.clone();
                tokio::spawn(rotate_secret(
                    secret, want, material, until, resolver, tx, shutdown,
                ));
                Ok(certs)
            }
            CertSource::Dir(dir) => {
                let files = read_dir(&dir).await?;
                let key = files.certified_key(&dir)?;
                let (tx, rx) = watch::channel(files.ca.clone());
                let certs = Certs::new(key, rx);
                tokio::spawn(watch_dir(dir, files, certs.resolver.clone(), tx, shutdown));
                Ok(certs)
            }
        }
    }

    fn new(key: CertifiedKey, ca_bundle: watch::Receiver<Option<Vec<u8>>>) -> Certs {
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
        });
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // aws-lc-rs supports every safe default version; the Err arm is unreachable
            // with this provider, so falling back to the process default is harmless.
            .unwrap_or_else(|_| rustls::ServerConfig::builder())
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Certs {
            resolver,
            server_config: Arc::new(config),
            ca_bundle,
        }
    }

    /// A rustls server config whose certificate resolver always serves the current cert
    /// (ALPN http/1.1).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config.clone()
    }

    /// The CA bundle (PEM) the API server must trust; changes on CA rotation. `None` in
    /// Dir mode without ca.crt.
    pub fn ca_bundle(&self) -> watch::Receiver<Option<Vec<u8>>> {
        self.ca_bundle.clone()
    }
}

fn validity_seconds(validity: Duration) -> i64 {
    i64::try_from(validity.as_secs())
        .unwrap_or(i64::MAX / 8)
        .max(3)
}

struct WantOwned {
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    validity: i64,
}

impl WantOwned {
    fn borrow(&self) -> Want<'_> {
        Want {
            dns_names: &self.dns_names,
            ip_addresses: &self.ip_addresses,
            validity: self.validity,
        }
    }
}

/// The certificate Secret and the requests about it.
struct SecretRef {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl SecretRef {
    fn place(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    fn kube(&self, action: &'static str) -> impl FnOnce(kube::Error) -> CertError + '_ {
        move |source| CertError::Kube {
            action,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// Brings the Secret to what `decide` wants at `now` and returns its material and
    /// the next time a decision may differ. Writes are guarded by resourceVersion; a
    /// replica that loses a race (409) reads the winner's Secret and decides again.
    async fn sync(&self, want: &Want<'_>, now: i64) -> Result<(Material, i64), CertError> {
        let wanted_sans = sans_key(want.dns_names, want.ip_addresses);
        // Each lost race means another replica wrote; a handful of rounds always ends.
        for _ in 0..5 {
            let existing = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(self.kube("read"))?;
            let Some(existing) = existing else {
                let material = fresh(now, want)?;
                let secret = material.to_secret(&self.namespace, &self.name);
                match self.api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        info!(secret = %self.place(), not_after = %rfc3339(material.serving.not_after), "created the webhook CA and serving certificate");
                        let until = keep_until(&material, &wanted_sans, now);
                        return Ok((material, until));
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(self.kube("create")(e)),
                }
            };
            let ours = existing
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_BY.0))
                .is_some_and(|v| v == MANAGED_BY.1);
            if !ours {
                return Err(CertError::Foreign {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                });
            }
            let (current, rotation) = match Material::from_secret(&existing) {
                Ok(m) => {
                    let rotation = decide(&m, &wanted_sans, now);
                    (Some(m), rotation)
                }
                Err(reason) => {
                    warn!(secret = %self.place(), %reason, "webhook certificate Secret is incomplete; recreating it");
                    (None, Rotation::Recreate)
                }
            };
            let next = match (&current, rotation) {
                (Some(m), Rotation::Keep { until }) => return Ok((m.clone(), until)),
                (Some(m), rotation) => rotate(m, rotation, now, want)?,
                (None, _) => Some(fresh(now, want)?),
            };
            let Some(next) = next else { continue };
            let mut secret = next.to_secret(&self.namespace, &self.name);
            secret.metadata.resource_version = existing.metadata.resource_version.clone();
            match self
                .api
                .replace(&self.name, &PostParams::default(), &secret)
                .await
            {
                Ok(_) => {
                    info!(secret = %self.place(), ?rotation, not_after = %rfc3339(next.serving.not_after), ca_not_after = %rfc3339(next.ca.not_after), "rotated the webhook certificate");
                    let until = keep_until(&next, &wanted_sans, now);
                    return Ok((next, until));
                }
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(self.kube("update")(e)),
            }
        }
        Err(CertError::Invalid {
            place: self.place(),
            reason: "kept changing under five consecutive writes".into(),
        })
    }
}

fn keep_until(material: &Material, wanted_sans: &str, now: i64) -> i64 {
    match decide(material, wanted_sans, now) {
        Rotation::Keep { until } => until,
        // Due again at once only with a lifetime below a second; retry soon.
        _ => now + 1,
    }
}

/// Brings a self-signed source's Secret up to date once, for callers that reconcile
/// instead of running [`Certs::start`]'s task (the manager keeps its CA this way and
/// signs managed operators' serving certificates with it, see [`issue`]): returns the
/// Secret's material and how long until it next needs a look.
///
/// # Errors
/// [`CertError`], and [`CertError::NotSelfSigned`] for a cert directory.
pub async fn reconcile_secret(
    client: Client,
    source: &CertSource,
) -> Result<(Material, Duration), CertError> {
    let CertSource::SelfSigned {
        namespace,
        name,
        dns_names,
        ip_addresses,
        validity,
    } = source
    else {
        return Err(CertError::NotSelfSigned("reconcile_secret"));
    };
    let secret = SecretRef {
        api: Api::namespaced(client, namespace),
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let want = Want {
        dns_names,
        ip_addresses,
        validity: validity_seconds(*validity),
    };
    let now = now();
    let (material, until) = secret.sync(&want, now).await?;
    let wait = Duration::from_secs(u64::try_from(until - now).unwrap_or(0).max(1));
    Ok((material, wait))
}

/// A serving certificate for `dns_names`/`ip_addresses` signed by `ca`'s current CA,
/// issued at `now` (Unix seconds), valid for `validity` or until the CA expires:
/// (certificate PEM, key PEM, lifetime). Pure apart from key generation.
///
/// # Errors
/// [`CertError::Generate`], or [`CertError::Invalid`] for a bad name or CA key.
pub fn issue(
    ca: &Material,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
    validity: Duration,
    now: i64,
) -> Result<(String, String, Lifetime), CertError> {
    let want = Want {
        dns_names,
        ip_addresses,
        validity: validity_seconds(validity),
    };
    new_serving(now, &want, &ca.ca_key, &ca.ca_name, ca.ca)
}

/// The current time in Unix seconds, as the rotation decisions count it.
pub fn now() -> i64 {
    Timestamp::now().as_second()
}

/// Formats Unix seconds as RFC 3339, as the annotations hold times.
pub fn rfc3339(unix: i64) -> String {
    Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// Parses an RFC 3339 time into Unix seconds.
pub fn parse_rfc3339(value: &str) -> Option<i64> {
    value.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// How long to sleep before the next look at the Secret: until the next decision
/// (`until`, Unix seconds; `now_ms` in milliseconds), but at most a tenth of the
/// serving lifetime (another replica may have rotated it), at least 100 ms.
fn next_wait(until: i64, now_ms: i64, validity: i64) -> Duration {
    let cap_ms = (validity * 100).clamp(100, 600_000);
    let wait_ms = (until * 1000 - now_ms).clamp(100, cap_ms);
    Duration::from_millis(u64::try_from(wait_ms).unwrap_or(100))
}

fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

async fn rotate_secret(
    secret: SecretRef,
    want: WantOwned,
    mut material: Material,
    mut until: i64,
    resolver: Arc<Resolver>,
    ca_bundle: watch::Sender<Option<Vec<u8>>>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let wait = if failures == 0 {
            next_wait(until, now_ms(), want.validity)
        } else {
            Duration::from_secs(1 << failures.min(5))
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match secret.sync(&want.borrow(), now()).await {
            Ok((next, next_until)) => {
                failures = 0;
                until = next_until;
                if next.tls_crt != material.tls_crt || next.tls_key != material.tls_key {
                    match certified_key(
                        next.tls_crt.as_bytes(),
                        next.tls_key.as_bytes(),
                        &secret.place(),
                    ) {
                        Ok(key) => {
                            resolver.set(key);
                            info!(secret = %secret.place(), not_after = %rfc3339(next.serving.not_after), "serving the renewed webhook certificate");
                        }
                        Err(e) => warn!("keeping the current webhook certificate: {e}"),
                    }
                }
                let bundle = next.ca_bundle.clone().into_bytes();
                ca_bundle.send_if_modified(|current| {
                    let changed = current.as_deref() != Some(bundle.as_slice());
                    if changed {
                        *current = Some(bundle);
                    }
                    changed
                });
                material = next;
            }
            Err(e) => {
                failures += 1;
                warn!(
                    category = e.category(),
                    "webhook certificate check failed (retrying): {e}"
                );
            }
        }
    }
}

/// The files of a cert directory.
#[derive(Clone, PartialEq, Eq)]
struct DirFiles {
    crt: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
}

impl DirFiles {
    fn certified_key(&self, dir: &Path) -> Result<CertifiedKey, CertError> {
        certified_key(&self.crt, &self.key, &dir.display().to_string())
    }
}

async fn read_file(path: PathBuf) -> Result<Vec<u8>, CertError> {
    tokio::fs::read(&path)
        .await
        .map_err(|source| CertError::Read { path, source })
}

async fn read_dir(dir: &Path) -> Result<DirFiles, CertError> {
    let crt = read_file(dir.join("tls.crt")).await?;
    let key = read_file(dir.join("tls.key")).await?;
    let ca = match tokio::fs::read(dir.join("ca.crt")).await {
        Ok(ca) if !ca.is_empty() => Some(ca),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(CertError::Read {
                path: dir.join("ca.crt"),
                source,
            });
        }
    };
    Ok(DirFiles { crt, key, ca })
}

async fn watch_dir(
    dir: PathBuf,
    mut files: DirFiles,
    resolver: Arc<Resolver>,
    ca_bundle: watch::Sender<Option<Vec<u8>>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(DIR_POLL) => {}
        }
        let next = match read_dir(&dir).await {
            Ok(next) if next != files => next,
            Ok(_) => continue,
            Err(e) => {
                warn!("keeping the current webhook certificate: {e}");
                continue;
            }
        };
        // A half-written pair (cert renewed, key not yet) fails the key match; the next
        // poll sees the finished pair.
        match next.certified_key(&dir) {
            Ok(key) => {
                resolver.set(key);
                info!(dir = %dir.display(), "serving the changed webhook certificate");
            }
            Err(e) => {
                warn!("keeping the current webhook certificate: {e}");
                continue;
            }
        }
        let ca = next.ca.clone();
        ca_bundle.send_if_modified(|current| {
            let changed = *current != ca;
            if changed {
                *current = ca;
            }
            changed
        });
        files = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> WantOwned {
        WantOwned {
            dns_names: vec!["svc.ns.svc".into()],
            ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
            validity: 300,
        }
    }

    fn material(now: i64) -> Material {
        fresh(now, &want().borrow()).expect("fresh")
    }

    #[test]
    fn lifetime_renews_at_two_thirds() {
        let l = Lifetime {
            issued_at: 100,
            not_after: 400,
        };
        assert_eq!(l.renew_at(), 300);
    }

    #[test]
    fn fresh_material_is_kept_until_the_serving_renewal() {
        let m = material(1000);
        assert_eq!(
            m.serving,
            Lifetime {
                issued_at: 1000,
                not_after: 1300
            }
        );
        assert_eq!(
            m.ca,
            Lifetime {
                issued_at: 1000,
                not_after: 1000 + 1200
            }
        );
        let sans = sans_key(&want().dns_names, &want().ip_addresses);
        assert_eq!(decide(&m, &sans, 1000), Rotation::Keep { until: 1200 });
        assert_eq!(decide(&m, &sans, 1199), Rotation::Keep { until: 1200 });
        assert_eq!(decide(&m, &sans, 1200), Rotation::RenewServing);
    }

    #[test]
    fn changed_names_renew_the_serving_certificate() {
        let m = material(1000);
        assert_eq!(decide(&m, "other.ns.svc", 1001), Rotation::RenewServing);
    }

    #[test]
    fn a_ca_past_two_thirds_rotates_and_an_expired_one_starts_over() {
        let m = material(1000);
        let sans = m.sans.clone();
        assert_eq!(decide(&m, &sans, 1000 + 800), Rotation::RotateCa);
        assert_eq!(decide(&m, &sans, 1000 + 1200), Rotation::Recreate);
    }

    #[test]
    fn ca_rotation_keeps_the_old_ca_in_the_bundle_and_signs_with_it_once() {
        let want = want();
        let m = material(1000);
        let rotated = rotate(&m, Rotation::RotateCa, 1800, &want.borrow())
            .expect("rotate")
            .expect("changed");
        let blocks = pem_blocks(&rotated.ca_bundle);
        assert_eq!(blocks.len(), 2, "new and old CA side by side");
        assert_eq!(blocks[1], pem_blocks(&m.ca_bundle)[0], "old CA second");
        assert_ne!(rotated.ca_key, m.ca_key);
        assert_eq!(rotated.previous_ca_not_after, Some(m.ca.not_after));
        assert_eq!(
            rotated.ca,
            Lifetime {
                issued_at: 1800,
                not_after: 3000
            }
        );
        // Issued by the old CA, capped at its expiry (1800 + 300 < 2200: not capped).
        assert_eq!(
            rotated.serving,
            Lifetime {
                issued_at: 1800,
                not_after: 2100
            }
        );
        assert_eq!(
            verify(&rotated.tls_crt, &blocks[1..]),
            Ok(()),
            "the serving certificate chains to the old CA"
        );
        // Next: the serving renewal from the new CA, then the old CA's drop.
        let sans = rotated.sans.clone();
        assert_eq!(
            decide(&rotated, &sans, 1801),
            Rotation::Keep { until: 2000 }
        );
        let renewed = rotate(&rotated, Rotation::RenewServing, 2000, &want.borrow())
            .expect("renew")
            .expect("changed");
        assert_eq!(verify(&renewed.tls_crt, &blocks[..1]), Ok(()));
        assert_eq!(
            decide(&renewed, &sans, 2001),
            Rotation::Keep { until: 2200 }
        );
        // Both due at 2200: the serving renewal goes first, the drop right after.
        assert_eq!(decide(&renewed, &sans, 2200), Rotation::RenewServing);
        let renewed = rotate(&renewed, Rotation::RenewServing, 2200, &want.borrow())
            .expect("renew")
            .expect("changed");
        assert_eq!(decide(&renewed, &sans, 2200), Rotation::DropPreviousCa);
        let dropped = rotate(&renewed, Rotation::DropPreviousCa, 2200, &want.borrow())
            .expect("drop")
            .expect("changed");
        assert_eq!(pem_blocks(&dropped.ca_bundle), blocks[..1].to_vec());
        assert_eq!(dropped.previous_ca_not_after, None);
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let want = want();
        let m = material(1000);
        // 100 s before the CA's end: the renewal is capped there.
        let m2 = rotate(&m, Rotation::RenewServing, 2100, &want.borrow())
            .expect("renew")
            .expect("changed");
        assert_eq!(m2.serving.not_after, m.ca.not_after);
    }

    #[test]
    fn material_round_trips_through_the_secret_and_debug_hides_keys() {
        let m = rotate(&material(1000), Rotation::RotateCa, 1800, &want().borrow())
            .expect("rotate")
            .expect("changed");
        let secret = m.to_secret("ns", "tls");
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(Material::from_secret(&secret), Ok(m.clone()));
        let debug = format!("{m:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(!debug.contains("BEGIN"), "{debug}");
    }

    #[test]
    fn an_incomplete_secret_names_what_is_missing() {
        let mut secret = material(1000).to_secret("ns", "tls");
        secret
            .metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .remove(NOT_AFTER_ANNOTATION);
        assert_eq!(
            Material::from_secret(&secret),
            Err(format!("annotation {NOT_AFTER_ANNOTATION} is missing"))
        );
        secret.data.as_mut().expect("data").remove("tls.key");
        assert_eq!(
            Material::from_secret(&secret),
            Err("key tls.key is missing".into())
        );
    }

    #[test]
    fn certified_key_rejects_a_key_of_another_certificate() {
        crate::install_crypto_provider();
        let a = material(1000);
        let b = material(1000);
        assert!(certified_key(a.tls_crt.as_bytes(), a.tls_key.as_bytes(), "a").is_ok());
        let err = certified_key(a.tls_crt.as_bytes(), b.tls_key.as_bytes(), "dir /x")
            .expect_err("mismatched pair");
        let text = err.to_string();
        assert!(text.contains("dir /x"), "{text}");
        assert!(!text.contains("PRIVATE"), "{text}");
        let err = certified_key(b"", a.tls_key.as_bytes(), "dir /y").expect_err("no cert");
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    #[test]
    fn next_wait_is_bounded() {
        assert_eq!(next_wait(100, 100_000, 300), Duration::from_millis(100));
        assert_eq!(next_wait(110, 100_500, 300), Duration::from_millis(9_500));
        assert_eq!(next_wait(10_000, 100_000, 300), Duration::from_secs(30));
        assert_eq!(
            next_wait(10_000_000, 100_000, 365 * 24 * 3600),
            Duration::from_secs(600)
        );
    }

    fn served(certs: &Certs) -> Vec<u8> {
        certs.resolver.current.read().expect("lock").cert[0].to_vec()
    }

    #[tokio::test]
    async fn a_cert_dir_is_re_read_when_its_files_change() {
        crate::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |m: &Material| {
            std::fs::write(dir.path().join("tls.crt"), &m.tls_crt).expect("crt");
            std::fs::write(dir.path().join("tls.key"), &m.tls_key).expect("key");
            std::fs::write(dir.path().join("ca.crt"), &m.ca_bundle).expect("ca");
        };
        let (first, second) = (material(1000), material(2000));
        write(&first);
        let stop = CancellationToken::new();
        let certs = Certs::start(None, CertSource::Dir(dir.path().into()), stop.clone())
            .await
            .expect("dir certs");
        let der = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .expect("pem")
                .to_vec()
        };
        assert_eq!(served(&certs), der(&first.tls_crt));
        let mut bundle = certs.ca_bundle();
        assert_eq!(
            bundle.borrow_and_update().as_deref(),
            Some(first.ca_bundle.as_bytes())
        );
        // A half-written pair (new cert, old key) is not taken.
        std::fs::write(dir.path().join("tls.crt"), &second.tls_crt).expect("crt");
        tokio::time::sleep(DIR_POLL * 2).await;
        assert_eq!(
            served(&certs),
            der(&first.tls_crt),
            "mismatched pair kept out"
        );
        write(&second);
        tokio::time::timeout(Duration::from_secs(30), bundle.changed())
            .await
            .expect("the new bundle within 30 s")
            .expect("open");
        assert_eq!(served(&certs), der(&second.tls_crt));
        assert_eq!(
            bundle.borrow().as_deref(),
            Some(second.ca_bundle.as_bytes())
        );
        stop.cancel();
        // Without a directory's files, no start.
        let empty = tempfile::tempdir().expect("tempdir");
        let err = Certs::start(None, CertSource::Dir(empty.path().into()), stop)
            .await
            .expect_err("no files");
        assert!(err.to_string().contains("tls.crt"), "{err}");
    }

    /// Verifies a leaf against CA PEM blocks with webpki, as a TLS client would.
    fn verify(leaf_pem: &str, cas: &[String]) -> Result<(), String> {
        crate::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            let der = CertificateDer::from_pem_slice(ca.as_bytes()).map_err(|e| e.to_string())?;
            roots.add(der).map_err(|e| e.to_string())?;
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .map_err(|e| e.to_string())?;
        let leaf =
            CertificateDer::from_pem_slice(leaf_pem.as_bytes()).map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from("svc.ns.svc").map_err(|e| e.to_string())?;
        // Inside the serving certificate's validity (issued at 1800 or 2000).
        let at = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(2050));
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], at)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
