//! Device models: one folder per emulated device (its registers, its DMA,
//! its state), each a [`crate::vfio::model::PciModel`].

use std::sync::Arc;

use crate::vfio::model::PciModel;
use crate::{bail, Result};

/// A new model of `kind` from `key=value` parameters (the
/// `--device KIND,key=value,...` syntax; the registry has taken its own
/// keys out). `EINVAL` for an unknown kind or parameter.
pub fn create(kind: &str, params: &[(String, String)]) -> Result<Arc<dyn PciModel>> {
    let _ = params;
    bail!(EINVAL, "unknown device model {kind:?}")
}
