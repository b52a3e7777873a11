//! Admission and conversion webhooks: the certificate the server presents ([`certs`])
//! and the webhook configurations that point the API server at it ([`configuration`]).

pub mod certs;
pub mod configuration;
