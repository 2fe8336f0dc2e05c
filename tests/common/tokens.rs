//! Signing keys and JWTs for tests that play an identity provider.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key and its public JWK.
pub struct Signer {
    pub kid: String,
    pub alg: Algorithm,
    pub key: EncodingKey,
    pub jwk: Jwk,
    pub public_pem: String,
}

impl Signer {
    pub fn new(kid: &str, alg: Algorithm) -> Signer {
        sallyport::install_crypto_provider();
        let pair = match alg {
            Algorithm::RS256 | Algorithm::PS256 => {
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            Algorithm::ES256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Algorithm::EdDSA => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
            other => panic!("no test key for {other:?}"),
        }
        .unwrap();
        let pem = pair.serialize_pem();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .unwrap();
        let mut jwk = match alg {
            // The library cannot derive an Ed25519 JWK from this PKCS#8 form; build it.
            Algorithm::EdDSA => serde_json::from_value(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "x": b64_bytes(pair.public_key_raw()),
            }))
            .unwrap(),
            _ => Jwk::from_encoding_key(&key, alg).unwrap(),
        };
        jwk.common.key_id = Some(kid.to_string());
        Signer {
            kid: kid.to_string(),
            alg,
            key,
            jwk,
            public_pem: pair.public_key_pem(),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Unsigned JSON segments, for hand-built attack tokens.
pub fn b64(v: &Value) -> String {
    b64_bytes(v.to_string().as_bytes())
}

pub fn b64_bytes(bytes: &[u8]) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::encode_string(bytes)
}
