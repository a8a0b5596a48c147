//! Marathon source config: `[marathon]`. Owned by the Marathon work; extended there.

use serde::{Deserialize, Serialize};

use crate::validate::Validator;

/// `[marathon]`: where to follow Marathon.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MarathonConfig {
    /// Marathon base URLs (several: the leader is followed).
    pub urls: Vec<String>,
}

impl MarathonConfig {
    /// Validates `[marathon]`.
    pub fn validate(&self, cx: &mut Validator) {
        if self.urls.is_empty() {
            cx.error("marathon.urls", "at least one URL is needed");
        }
    }
}
