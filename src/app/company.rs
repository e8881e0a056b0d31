//! [`Company`]: the Understory customer behind a connection.

use serde::{Deserialize, Serialize};

/// The Understory company that authorized a connection, as `GET /v1/me` names it
/// (`company_id`, `company_name`), read once after the code exchange.
///
/// ```
/// use understory_auth::Company;
///
/// let company = Company::new("cmp_123", "Fjord Kayaks");
/// assert_eq!(company.id, "cmp_123");
/// assert_eq!(company.name, "Fjord Kayaks");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Company {
    /// Understory's id of the company (`company_id`).
    pub id: String,
    /// The company's name (`company_name`).
    pub name: String,
}

impl Company {
    /// A company with this id and name.
    ///
    /// ```
    /// let company = understory_auth::Company::new("cmp_123", "Fjord Kayaks");
    /// # let _ = company;
    /// ```
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Company {
            id: id.into(),
            name: name.into(),
        }
    }
}
