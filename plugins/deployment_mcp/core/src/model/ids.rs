//! [`DeploymentId`] and [`EnvironmentId`]: ids that were checked once, where they entered (a
//! request, the environments file, the store), and are only carried after that.

use std::{borrow::Borrow, fmt, ops::Deref};

use serde::{Deserialize, Deserializer, Serialize};

use super::FieldError;

/// The most characters an id has (ids appear in URLs and store keys).
pub const MAX_ID_LEN: usize = 64;

/// The same surface for both ids: read as `&str`, compared with text, written as a string,
/// read back (checked) from one.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, field: $field:literal, pattern: $pattern:literal, check: $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `text`: the error names the field and says what an id looks like.
            pub fn parse(text: &str) -> Result<$name, FieldError> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(text).map_err(|expected| FieldError::new($field, format!("{text:?} is not a valid id: {expected}")))?;
                Ok($name(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
                $name::parse(&text).map_err(|error| serde::de::Error::custom(error.message))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

id_type!(
    /// A deployment's id: `dep-<created, ms since the epoch>-<8 hex digits>`, made by
    /// [`DeploymentId::generate`].
    DeploymentId,
    field: "deployment_id",
    pattern: "^dep-[0-9]+-[0-9a-f]{8}$",
    check: |text| {
        let valid = text.len() <= MAX_ID_LEN
            && text.starts_with("dep-")
            && text[4..].chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if valid {
            Ok(())
        } else {
            Err("a deployment id is dep-<digits>-<hex digits>".into())
        }
    }
);

id_type!(
    /// An environment's id: 1–64 letters, digits, `_`, `-` or `.`, starting with a letter or a
    /// digit.
    EnvironmentId,
    field: "environment_id",
    pattern: "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    check: |text| {
        let valid = !text.is_empty()
            && text.len() <= MAX_ID_LEN
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if valid {
            Ok(())
        } else {
            Err(format!(
                "use 1 to {MAX_ID_LEN} letters, digits, '_', '-' or '.', starting with a letter or digit"
            ))
        }
    }
);

impl DeploymentId {
    /// A new id for a deployment created at `now_ms`: time-ordered, and random enough not to
    /// collide.
    pub fn generate(now_ms: u64) -> DeploymentId {
        let mut random = [0u8; 4];
        // Without system randomness the id still is unique per millisecond and process.
        if getrandom::fill(&mut random).is_err() {
            random = (std::process::id() ^ now_ms as u32).to_be_bytes();
        }
        DeploymentId(format!("dep-{now_ms}-{}", hex::encode(random)))
    }

    /// The creation time the id carries (ms since the epoch), when it has one.
    pub fn created_ms(&self) -> Option<u64> {
        self.0
            .strip_prefix("dep-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|ms| ms.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_where_they_enter() {
        let id = DeploymentId::generate(1_795_000_000_123);
        assert!(
            id.starts_with("dep-1795000000123-") && id.len() == 26,
            "{id}"
        );
        assert_eq!(DeploymentId::parse(&id).unwrap(), id);
        assert_eq!(id.created_ms(), Some(1_795_000_000_123));
        let error = DeploymentId::parse("../etc").unwrap_err();
        assert_eq!(error.field, "deployment_id");
        assert!(EnvironmentId::parse("web-1.eu_2").is_ok());
        for bad in ["", "-web", "web/1", &"a".repeat(65)] {
            let error = EnvironmentId::parse(bad).unwrap_err();
            assert_eq!(error.field, "environment_id", "{bad:?}");
            assert!(error.message.contains("letters, digits"), "{error}");
        }
    }

    #[test]
    fn written_and_read_as_strings_and_read_checked() {
        let id = EnvironmentId::parse("web").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"web\"");
        assert_eq!(
            serde_json::from_str::<EnvironmentId>("\"web\"").unwrap(),
            id
        );
        assert!(serde_json::from_str::<EnvironmentId>("\"we b\"").is_err());
        assert_eq!(id, "web");
        let map: std::collections::HashMap<EnvironmentId, u8> = [(id.clone(), 1)].into();
        assert_eq!(map.get("web"), Some(&1));
    }
}
