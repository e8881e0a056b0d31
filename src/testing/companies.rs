//! The companies (Understory's customers) the sandbox knows, and how `/v1/me` shows them.

use serde_json::{Value, json};

/// A company: its id and name; its one user is derived from the id.
#[derive(Clone, Debug)]
pub(crate) struct Company {
    pub(crate) id: String,
    pub(crate) name: String,
}

impl Company {
    /// `company_id`, `company_name`, `user_id` (`user-<id>`) and `email` (`owner@<id>.example`).
    pub(crate) fn me(&self) -> Value {
        json!({
            "company_id": self.id,
            "company_name": self.name,
            "user_id": format!("user-{}", self.id),
            "email": format!("owner@{}.example", self.id),
        })
    }
}
