//! Device models: one folder per emulated device (its registers, its DMA,
//! its state), each a [`crate::vfio::model::PciModel`].

pub mod dma_engine;

use std::sync::Arc;

use crate::vfio::model::PciModel;
use crate::{bail, Result};

/// A new model of `kind` from `key=value` parameters (the
/// `--device KIND,key=value,...` syntax; the registry has taken its own
/// keys out). `EINVAL` for an unknown kind or parameter.
pub fn create(kind: &str, params: &[(String, String)]) -> Result<Arc<dyn PciModel>> {
    match kind {
        dma_engine::KIND => Ok(Arc::new(dma_engine::DmaEngine::from_params(params)?)),
        _ => bail!(EINVAL, "unknown device model {kind:?} (known: dma-engine)"),
    }
}
