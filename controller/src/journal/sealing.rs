//! Build secrets sealed for the database (STATE_KEY): AES-256-GCM, with
//! the build's id as associated data, so a blob opens only with the key
//! that sealed it and only as the secrets of the build it was sealed for
//! (a row copied onto another build's does not open).
//!
//! The embedded journal keeps secrets in files beside it instead
//! ([`super::vault`]); with DATABASE_URL and STATE_KEY a controller needs no
//! volume for them, and any controller with the key can resume a build.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;

/// The format of a sealed blob: this byte, the nonce, the ciphertext and
/// its tag.
const FORMAT: u8 = 1;

/// The key that seals build secrets for the database.
pub struct StateKey(LessSafeKey);

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(***)")
    }
}

impl StateKey {
    /// A key from its base64 text (32 bytes, `openssl rand -base64 32`).
    /// The error never repeats the text.
    pub fn from_base64(text: &str) -> Result<StateKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "STATE_KEY is not base64; make one with `openssl rand -base64 32`")?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| {
            let hex = text.trim().len() == 64 && text.trim().bytes().all(|b| b.is_ascii_hexdigit());
            let looks = if hex {
                " (it looks like hex: base64 is wanted)"
            } else {
                ""
            };
            format!(
                "STATE_KEY is {} bytes, not 32{looks}; make one with `openssl rand -base64 32`",
                bytes.len()
            )
        })?;
        Ok(StateKey(LessSafeKey::new(key)))
    }

    /// `plain` sealed for build `id`.
    pub fn seal(&self, id: &str, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
        let mut body = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut body,
            )
            .map_err(|_| std::io::Error::other("sealing build secrets failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// What [`StateKey::seal`] sealed for build `id`, or why it does not open.
    pub fn open(&self, id: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let refused = || {
            format!(
                "STATE_KEY does not open build {id}'s secrets: it is not the key they were \
                 sealed with. Give the controller that key"
            )
        };
        let (&format, rest) = sealed.split_first().ok_or_else(refused)?;
        if format != FORMAT || rest.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut body = body.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut body)
            .map_err(|_| refused())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> StateKey {
        StateKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([byte; 32]))
            .unwrap()
    }

    #[test]
    fn a_sealed_blob_opens_with_its_key_for_its_build_only() {
        let sealed = key(1).seal("b1", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key(1).open("b1", &sealed).unwrap(), b"hunter2");
        let e = key(2).open("b1", &sealed).unwrap_err();
        assert!(e.contains("not the key they were sealed with"), "{e}");
        assert!(key(1).open("b2", &sealed).is_err(), "bound to its build");
        assert!(key(1).open("b1", &sealed[..5]).is_err());
        assert_ne!(
            key(1).seal("b1", b"x").unwrap(),
            key(1).seal("b1", b"x").unwrap()
        );
    }

    #[test]
    fn a_key_of_the_wrong_size_or_not_base64_is_refused_without_repeating_it() {
        let e = StateKey::from_base64("c2VjcmV0").unwrap_err();
        assert!(
            e.contains("6 bytes, not 32") && !e.contains("c2VjcmV0"),
            "{e}"
        );
        let e = StateKey::from_base64("not base64 at all!").unwrap_err();
        assert!(e.contains("not base64") && !e.contains("at all"), "{e}");
    }
}
