//! TLS for the QUIC transport: HQ's self-signed certificate, the server config, and the agent's
//! client config that pins HQ's certificate from the provisioning file.
//!
//! Invariants: only TLS 1.3 (QUIC requires it) with the ring provider; the agent accepts exactly
//! the pinned certificate (no CA, no name check beyond it) and still verifies the handshake
//! signature against it; the TLS binding the agent signs comes from the session's exporter, so
//! a signature cannot be replayed on another connection.

use super::{ALPN, IDLE_TIMEOUT_MS, KEEP_ALIVE_MS, SERVER_NAME, TransportError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// Exporter label of the authentication binding.
const BINDING_LABEL: &[u8] = b"EXPORTER-chainsync-auth-v1";

/// HQ's TLS certificate and private key, both DER.
#[derive(Clone)]
pub struct HqCertificate {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

/// Generates HQ's self-signed certificate (agents pin it, so no CA is involved).
pub fn generate_hq_certificate() -> Result<HqCertificate, TransportError> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .map_err(|e| TransportError::Tls(format!("generating the certificate: {e}")))?;
    Ok(HqCertificate {
        cert_der: certified.cert.der().to_vec(),
        key_der: certified.signing_key.serialize_der(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config() -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_MS)));
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(IDLE_TIMEOUT_MS))
        .map_err(|e| TransportError::Tls(format!("idle timeout: {e}")))?;
    transport.max_idle_timeout(Some(idle));
    // One bidirectional stream carries a session; nothing else is opened.
    transport.max_concurrent_uni_streams(0u8.into());
    transport.max_concurrent_bidi_streams(2u8.into());
    // BBR rather than quinn's default (CUBIC): CUBIC takes random loss for congestion and a
    // store line with 15 % loss carried about 10 kB/s (5,000 receipts in 81 s); with BBR the
    // same backlog drains in under 5 s (`cargo bench --bench lines`; see docs/decisions.md).
    transport.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Ok(Arc::new(transport))
}

/// HQ's QUIC server configuration.
pub fn server_config(cert: &HqCertificate) -> Result<quinn::ServerConfig, TransportError> {
    let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config()?);
    Ok(config)
}

/// HQ's QUIC endpoint on `listen`. Its stateless-reset key and the key its connection ids are
/// made with are derived from `secret` (HQ's signing key) rather than drawn at random each
/// start, so an HQ restarted after a crash recognises the ids of the stores' old connections
/// and answers their packets with a reset they accept: they dial again at once instead of
/// waiting out the idle timeout (20 s) on a connection that is gone.
pub fn server_endpoint(
    cert: &HqCertificate,
    listen: std::net::SocketAddr,
    secret: &[u8; 32],
) -> Result<quinn::Endpoint, TransportError> {
    let reset_key = ResetKey(blake3::derive_key(
        "chainsync 2026-12 QUIC stateless reset key",
        secret,
    ));
    let cid_key = blake3::derive_key("chainsync 2026-12 QUIC connection id key", secret);
    let cid_key = u64::from_le_bytes([
        cid_key[0], cid_key[1], cid_key[2], cid_key[3], cid_key[4], cid_key[5], cid_key[6],
        cid_key[7],
    ]);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket = std::net::UdpSocket::bind(listen)?;
    Ok(quinn::Endpoint::new(
        config,
        Some(server_config(cert)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// HQ's stateless-reset key: keyed blake3, the same in every run of the same HQ.
struct ResetKey([u8; 32]);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(blake3::OUT_LEN);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        blake3::OUT_LEN
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // blake3::Hash compares in constant time.
        if blake3::keyed_hash(&self.0, data) == *signature {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// The agent's QUIC client configuration, trusting exactly `pinned_cert_der`.
pub fn client_config(pinned_cert_der: &[u8]) -> Result<quinn::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = PinnedCert {
        cert: pinned_cert_der.to_vec(),
        provider: provider.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config()?);
    Ok(config)
}

/// 32 bytes both ends of a connection derive from its TLS session.
pub fn tls_binding(conn: &quinn::Connection) -> Result<Vec<u8>, TransportError> {
    let mut out = vec![0u8; 32];
    conn.export_keying_material(&mut out, BINDING_LABEL, b"")
        .map_err(|_| TransportError::Tls("exporting the TLS binding failed".into()))?;
    Ok(out)
}

/// Accepts exactly one certificate: the one from the provisioning file.
#[derive(Debug)]
struct PinnedCert {
    cert: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
