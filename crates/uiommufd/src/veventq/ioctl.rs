//! The vEVENT queue's ioctl handler: `IOMMU_VEVENTQ_ALLOC`. The object and
//! its fd are in `mod.rs`.

use super::{Veventq, VeventqFile, VEVENTQ_MAX_DEPTH};
use crate::files;
use crate::uapi::*;
use crate::ucmd::Ucmd;
use crate::viommu::get_viommu;
use crate::{bail, Result};

/// `IOMMU_VEVENTQ_ALLOC`: a vEVENTQ object and its fd (close-on-exec).
///
/// Errnos, in the kernel's order: non-zero `flags` or `__reserved`, or the
/// `DEFAULT` type: `EOPNOTSUPP`; a depth of 0 or above 2^19: `EINVAL`;
/// `viommu_id` not a vIOMMU: `ENOENT`; a queue of that type exists on the
/// vIOMMU: `EEXIST`.
pub(crate) fn veventq_alloc(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuVeventqAlloc = u.cmd();
    if cmd.flags != 0 || cmd.__reserved != 0 || cmd.r#type == IOMMU_VEVENTQ_TYPE_DEFAULT {
        bail!(
            EOPNOTSUPP,
            "VEVENTQ_ALLOC: flags {:#x} and __reserved must be 0 and the type not DEFAULT (type {:#x})",
            cmd.flags,
            cmd.r#type
        );
    }
    if cmd.veventq_depth == 0 || cmd.veventq_depth > VEVENTQ_MAX_DEPTH {
        bail!(
            EINVAL,
            "VEVENTQ_ALLOC: depth {} is outside 1..={VEVENTQ_MAX_DEPTH}",
            cmd.veventq_depth
        );
    }
    let viommu = get_viommu(u.ctx, cmd.viommu_id)?;
    if viommu.find_veventq(cmd.r#type).is_some() {
        bail!(
            EEXIST,
            "VEVENTQ_ALLOC: vIOMMU {} already has a vEVENTQ of type {:#x}",
            cmd.viommu_id,
            cmd.r#type
        );
    }
    let r = u.ctx.reserve()?;
    let queue = Veventq::new(viommu.clone(), cmd.r#type, cmd.veventq_depth);
    let file = VeventqFile::new(&queue, u.ctx.clone());
    files::create_published(file, |fd| {
        cmd.out_veventq_id = r.id();
        cmd.out_veventq_fd = fd as u32;
        u.respond(&cmd)?;
        viommu.add_veventq(&queue)
    })?;
    r.finalize(queue);
    Ok(0)
}
