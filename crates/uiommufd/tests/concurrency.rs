//! Many threads mapping and unmapping on one IOAS through the ioctl path,
//! while other threads allocate and destroy objects; the invariant checker
//! runs at the end of every round.

use uiommufd::uapi::*;
use uiommufd::Context;
use uiommufd_testkit::{destroy, ioas_alloc, ioc, unmap};

#[test]
fn threads_map_unmap_one_ioas() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 300;
    let ctx = Context::new();
    let ioas_id = ioas_alloc(&ctx);
    // allocated IOVAs come from below 4 GiB; each thread's fixed IOVAs are above
    ctx.ioas(ioas_id)
        .unwrap()
        .iopt()
        .set_allowed(&[(0x1000, (1 << 32) - 1)])
        .unwrap();
    let buf = vec![0u8; 64 * 4096];
    let base = buf.as_ptr() as u64;

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let ctx = ctx.clone();
            s.spawn(move || {
                for r in 0..ROUNDS {
                    // a fixed IOVA owned by this thread, and an allocated one
                    let fixed = (1 << 32) + (t << 24) + (r % 8) * 0x10000;
                    let mut m = IommuIoasMap {
                        size: 40,
                        flags: IOMMU_IOAS_MAP_FIXED_IOVA
                            | IOMMU_IOAS_MAP_READABLE
                            | IOMMU_IOAS_MAP_WRITEABLE,
                        ioas_id,
                        user_va: base + (r % 16) * 4096,
                        length: 4096 * (1 + r % 4),
                        iova: fixed,
                        ..Default::default()
                    };
                    ioc(&ctx, IOMMU_IOAS_MAP, &mut m).unwrap();
                    let mut a = IommuIoasMap {
                        flags: IOMMU_IOAS_MAP_READABLE,
                        iova: 0,
                        ..m
                    };
                    ioc(&ctx, IOMMU_IOAS_MAP, &mut a).unwrap();
                    assert_eq!(unmap(&ctx, ioas_id, fixed, m.length), Ok(m.length));
                    unmap(&ctx, ioas_id, a.iova, a.length).unwrap();
                }
            });
        }
        // object churn beside the map traffic
        let ctx2 = ctx.clone();
        s.spawn(move || {
            for _ in 0..ROUNDS {
                let id = ioas_alloc(&ctx2);
                destroy(&ctx2, id).unwrap();
            }
        });
    });
    ctx.check_invariants().unwrap();
    assert!(ctx.ioas(ioas_id).unwrap().areas().is_empty());
    assert_eq!(ctx.object_count(), 1);
    uiommufd::pages::check_accounting().unwrap();
    drop(buf);
}

#[test]
fn destroy_while_in_use_is_ebusy_then_succeeds() {
    let ctx = Context::new();
    let id = ctx.ioas_alloc().unwrap();
    let held = ctx.ioas(id).unwrap();
    assert_eq!(destroy(&ctx, id), Err(libc::EBUSY));
    drop(held);
    assert_eq!(destroy(&ctx, id), Ok(0));
}
