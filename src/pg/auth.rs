//! Answers the server's authentication requests ('R' messages): trust,
//! cleartext password, md5 and SCRAM-SHA-256 (without channel binding,
//! also when the server offers SCRAM-SHA-256-PLUS over TLS).

use bytes::BytesMut;
use postgres_protocol::authentication::{self, sasl};
use postgres_protocol::message::frontend;

use super::message::Body;
use super::params::Secret;

/// Where the password came from, for the hint after a refusal.
#[derive(Debug, Clone, PartialEq)]
pub enum PasswordOrigin {
    Env,
    File(String),
}

pub struct Auth {
    user: String,
    password: Option<(Secret, PasswordOrigin)>,
    scram: Option<sasl::ScramSha256>,
    /// Set once a password was sent.
    pub used: Option<PasswordOrigin>,
}

pub enum Step {
    /// Authentication is complete.
    Done,
    /// A reply was written into the output buffer.
    Reply,
}

pub enum AuthError {
    NoPassword,
    Unsupported(String),
    Protocol(String),
}

impl Auth {
    pub fn new(user: &str, password: Option<(Secret, PasswordOrigin)>) -> Auth {
        Auth {
            user: user.to_string(),
            password,
            scram: None,
            used: None,
        }
    }

    fn password(&mut self) -> Result<&[u8], AuthError> {
        match &self.password {
            Some((secret, origin)) => {
                self.used = Some(origin.clone());
                Ok(secret.0.as_bytes())
            }
            None => Err(AuthError::NoPassword),
        }
    }

    /// Handles one AuthenticationRequest body.
    pub fn on_request(&mut self, body: &[u8], out: &mut BytesMut) -> Result<Step, AuthError> {
        let short = |e: &str| AuthError::Protocol(e.to_string());
        let mut b = Body::new(body);
        let code = b.i32().map_err(short)?;
        let io = |e: std::io::Error| AuthError::Protocol(e.to_string());
        match code {
            0 => Ok(Step::Done),
            3 => {
                let pw = self.password()?.to_vec();
                frontend::password_message(&pw, out).map_err(io)?;
                Ok(Step::Reply)
            }
            5 => {
                let s = b.bytes(4).map_err(short)?;
                let salt = [s[0], s[1], s[2], s[3]];
                let user = self.user.clone();
                let hash = authentication::md5_hash(user.as_bytes(), self.password()?, salt);
                frontend::password_message(hash.as_bytes(), out).map_err(io)?;
                Ok(Step::Reply)
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = b.cstr().map_err(short)?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                // Plain SCRAM even when -PLUS is offered: we announce no
                // channel binding ("n"), which the server accepts.
                if !mechanisms.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                    return Err(AuthError::Unsupported(format!(
                        "SASL mechanisms {}",
                        mechanisms.join(", ")
                    )));
                }
                let scram =
                    sasl::ScramSha256::new(self.password()?, sasl::ChannelBinding::unsupported());
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, scram.message(), out)
                    .map_err(io)?;
                self.scram = Some(scram);
                Ok(Step::Reply)
            }
            11 => {
                let scram = self.scram.as_mut().ok_or_else(|| {
                    AuthError::Protocol("SASL continue without a SASL start".into())
                })?;
                scram.update(b.rest()).map_err(io)?;
                frontend::sasl_response(scram.message(), out).map_err(io)?;
                Ok(Step::Reply)
            }
            12 => {
                let scram = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| AuthError::Protocol("SASL final without a SASL start".into()))?;
                // A wrong server signature means the server does not know
                // the password: it may not be the server we meant.
                scram.finish(b.rest()).map_err(|e| {
                    AuthError::Protocol(format!("the server's SCRAM proof is invalid: {e}"))
                })?;
                Ok(Step::Reply)
            }
            2 => Err(AuthError::Unsupported("Kerberos V5 authentication".into())),
            6 => Err(AuthError::Unsupported(
                "SCM credentials authentication".into(),
            )),
            7 | 8 => Err(AuthError::Unsupported("GSSAPI authentication".into())),
            9 => Err(AuthError::Unsupported("SSPI authentication".into())),
            other => Err(AuthError::Unsupported(format!(
                "authentication method {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(pw: Option<&str>) -> Auth {
        Auth::new("alice", pw.map(|p| (Secret(p.into()), PasswordOrigin::Env)))
    }

    #[test]
    fn pg_auth_md5_matches_postgres_formula() {
        let mut out = BytesMut::new();
        let mut a = auth(Some("pw"));
        let body = [0, 0, 0, 5, 1, 2, 3, 4];
        assert!(matches!(a.on_request(&body, &mut out), Ok(Step::Reply)));
        let expected = authentication::md5_hash(b"alice", b"pw", [1, 2, 3, 4]);
        assert!(out
            .windows(expected.len())
            .any(|w| w == expected.as_bytes()));
        assert_eq!(a.used, Some(PasswordOrigin::Env));
    }

    #[test]
    fn pg_auth_scram_chosen_over_plus_and_refusals() {
        let mut out = BytesMut::new();
        let body = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        assert!(matches!(
            auth(Some("pw")).on_request(body, &mut out),
            Ok(Step::Reply)
        ));
        // The initial response names plain SCRAM and gs2 header "n,,".
        let sent = String::from_utf8_lossy(&out).into_owned();
        assert!(
            sent.contains("SCRAM-SHA-256\0") && sent.contains("n,,n="),
            "{sent:?}"
        );
        let only_plus = b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0\0";
        assert!(matches!(
            auth(Some("pw")).on_request(only_plus, &mut out),
            Err(AuthError::Unsupported(_))
        ));
        assert!(matches!(
            auth(None).on_request(&[0, 0, 0, 3], &mut out),
            Err(AuthError::NoPassword)
        ));
        assert!(matches!(
            auth(None).on_request(&[0, 0, 0, 7], &mut out),
            Err(AuthError::Unsupported(_))
        ));
        assert!(matches!(
            auth(None).on_request(&[0, 0], &mut out),
            Err(AuthError::Protocol(_))
        ));
        assert!(matches!(
            auth(Some("p")).on_request(&[0, 0, 0, 5, 1], &mut out),
            Err(AuthError::Protocol(_))
        ));
        assert!(matches!(
            auth(Some("p")).on_request(&[0, 0, 0, 11], &mut out),
            Err(AuthError::Protocol(_))
        ));
        assert!(matches!(
            auth(None).on_request(&[0, 0, 0, 0], &mut out),
            Ok(Step::Done)
        ));
    }
}
