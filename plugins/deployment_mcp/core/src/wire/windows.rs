//! Deployment windows as the API shows them (SPEC §4e): each as it was created
//! ([`WindowSpec`]), with who created it and when.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    model::Timestamp,
    windows::{Verdict, WindowSpec},
};

/// `GET /windows`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WindowList {
    pub windows: Vec<WindowSpec>,
}

/// `GET /windows/explain`: whether the environment may deploy at the instant asked about.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WindowExplanation {
    pub environment: String,
    #[schema(value_type = String)]
    pub at: Timestamp,
    #[serde(flatten)]
    pub verdict: Verdict,
}
