//! Nested HWPTs (user-managed stage-1 page tables on a nest-parent HWPT)
//! and their cache invalidation.

use crate::uapi::dispatch::Ucmd;
use crate::uapi::*;
use crate::{err, Result};

/// Most entries one `IOMMU_HWPT_INVALIDATE` may carry.
const INVALIDATE_ENTRY_NUM_MAX: u32 = 1 << 19;

/// `IOMMU_HWPT_INVALIDATE`: on failure the reply still reports `entry_num`
/// (how many entries were handled: none here).
pub(crate) fn invalidate(u: &Ucmd) -> Result<i32> {
    let mut cmd: IommuHwptInvalidate = u.cmd();
    let page = crate::user::page_size();
    let rc = if cmd.__reserved != 0 {
        Err(err!(EOPNOTSUPP, "HWPT_INVALIDATE: __reserved must be zero"))
    } else if cmd.entry_num != 0
        && (cmd.data_uptr == 0
            || cmd.entry_len == 0
            || cmd.entry_len as u64 > page
            || cmd.entry_num > INVALIDATE_ENTRY_NUM_MAX)
    {
        Err(err!(
            EINVAL,
            "HWPT_INVALIDATE: bad data_uptr, entry_len or entry_num"
        ))
    } else {
        match u.ctx.get(cmd.hwpt_id) {
            Err(e) => Err(e),
            Ok(o) => Err(err!(
                ENOENT,
                "object {} is a {}, not a nested HWPT",
                cmd.hwpt_id,
                o.kind()
            )),
        }
    };
    cmd.entry_num = 0;
    u.respond(&cmd)?;
    rc
}
