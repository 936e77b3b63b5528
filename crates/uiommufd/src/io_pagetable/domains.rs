//! Domains and accesses on an IO page table (the kernel's
//! `iopt_table_add_domain`, `iopt_fill_domain`, `iopt_table_remove_domain`,
//! `iopt_calculate_iova_alignment`, `iopt_add_access`/`iopt_remove_access`),
//! and the invariants that tie domains and pins to the areas.
//!
//! Intervals: `last` inclusive; lengths in bytes. Locking and pin ownership
//! are described in the module documentation of `io_pagetable`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Weak};

use super::{AreaState, IoPagetable, MapSource, Prot, State};
use crate::domain::{Domain, HostAddr, Iova};
use crate::pages::Pages;
use crate::user::page_size;
use crate::{bail, Result};

/// What an IOAS asks of an access (an emulated device that pinned pages or
/// reads/writes by IOVA) when a range it may have pinned is being unmapped:
/// unpin everything in `[iova, iova + length)` before returning.
pub trait AccessNotify: Send + Sync + std::fmt::Debug {
    /// Unpin whatever this access pinned in `[iova, iova + length)`.
    fn unmap(&self, iova: u64, length: u64);
}

/// Host addresses of pinned IOVA pages, one per `PAGE_SIZE` page of the range.
pub type PinnedPages = Vec<u64>;

/// A registered access.
#[derive(Debug)]
struct AccessEntry {
    notify: Weak<dyn AccessNotify>,
    iova_alignment: u64,
}

/// How many removed domain IDs `check_invariants` remembers.
const RETIRED_KEEP: usize = 64;

/// Everything behind the table's `domains` lock.
#[derive(Debug, Default)]
pub(super) struct Attached {
    /// The attached domains, in attach order.
    pub(super) domains: Vec<Arc<dyn Domain>>,
    /// Registered accesses by token.
    accesses: BTreeMap<u64, AccessEntry>,
    next_token: u64,
    /// IDs of recently removed domains (their reserved ranges must be gone).
    retired: VecDeque<u64>,
    /// The page sizes every attached domain supports (the AND of their
    /// bitmaps, which are fixed per domain); `None` with none attached.
    /// Kept here so that a reader (a type1 dirty read wants the smallest)
    /// touches no domain for it.
    pgsizes: Option<u64>,
}

impl Attached {
    /// [`Attached::pgsizes`] as the domain list says it should be.
    fn pgsizes_of_domains(&self) -> Option<u64> {
        self.domains
            .iter()
            .map(|d| d.pgsize_bitmap())
            .reduce(|a, b| a & b)
    }

    /// Recompute [`Attached::pgsizes`] after the domain list changed.
    fn refresh_pgsizes(&mut self) {
        self.pgsizes = self.pgsizes_of_domains();
    }

    /// What the domains and accesses ask of the IOVA alignment (1 if none).
    pub(super) fn alignment(&self) -> u64 {
        let d = self
            .domains
            .iter()
            .map(|d| 1u64 << d.pgsize_bitmap().trailing_zeros());
        let a = self.accesses.values().map(|a| a.iova_alignment);
        d.chain(a).max().unwrap_or(1)
    }

    /// Everyone to tell about an unmap.
    pub(super) fn access_notifiers(&self) -> Vec<Weak<dyn AccessNotify>> {
        self.accesses.values().map(|a| a.notify.clone()).collect()
    }
}

/// One area as fill and unfill see it (copied out of the tree).
#[derive(Debug)]
pub(super) struct AreaRef {
    pub(super) iova: u64,
    pub(super) length: u64,
    pub(super) pages: Arc<Pages>,
    pub(super) start_byte: u64,
    pub(super) prot: Prot,
}

impl AreaRef {
    /// Host address of the first byte (of every byte, while the pages
    /// are not [`Pages::relocated`]).
    fn addr(&self) -> u64 {
        self.pages.host(self.start_byte)
    }

    /// Page indexes into `pages`, inclusive.
    fn page_range(&self) -> (u64, u64) {
        let ps = page_size();
        (
            self.start_byte / ps,
            (self.start_byte + self.length - 1) / ps,
        )
    }
}

/// Map one area into `domains`, first taking its domain pin when `pin`.
/// On error nothing stays mapped or pinned.
fn fill_area(a: &AreaRef, domains: &[Arc<dyn Domain>], pin: bool, max_pgsize: u64) -> Result<()> {
    if let Some(d) = a.pages.dmabuf() {
        // not pinned; tracked for revocation, and not mapped once revoked
        return d.fill(a.iova, a.addr(), a.length, a.prot, domains, max_pgsize);
    }
    if !a.pages.memory().mappable() {
        crate::bail!(
            EFAULT,
            "the area at {:#x} maps private memory of another process, which no domain can map here",
            a.iova
        );
    }
    let (first, last) = a.page_range();
    // the kernel's pfn reader allocates its batch for every area it fills
    crate::inject::point("iopt.fill.batch", libc::ENOMEM)?;
    if pin {
        a.pages.pin(first, last)?;
    }
    for (i, d) in domains.iter().enumerate() {
        if let Err(e) = map_area(&**d, a, max_pgsize) {
            for d in &domains[..i] {
                d.unmap(a.iova, a.length);
            }
            if pin {
                a.pages.unpin(first, last);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Map one area into domain `d` at the host addresses its pages live at
/// now: one `map` call, unless custody moved some of its pages
/// ([`crate::custody`]), then one per host-contiguous piece. On error
/// nothing of the area stays mapped in `d`.
pub(super) fn map_area(d: &dyn Domain, a: &AreaRef, max_pgsize: u64) -> Result<()> {
    if !a.pages.relocated() {
        return d.map(
            Iova(a.iova),
            HostAddr(a.addr()),
            a.length,
            a.prot,
            max_pgsize,
        );
    }
    let mut done = 0;
    let r = a
        .pages
        .for_each_host_run(a.start_byte, a.length, |delta, host, len| {
            d.map(
                Iova(a.iova + delta),
                HostAddr(host),
                len,
                a.prot,
                max_pgsize,
            )?;
            done = delta + len;
            Ok(())
        });
    if r.is_err() && done > 0 {
        d.unmap(a.iova, done);
    }
    r
}

/// Unmap one area from `domains`, then drop its domain pin when `unpin`.
pub(super) fn unfill_area(a: &AreaRef, domains: &[Arc<dyn Domain>], unpin: bool) {
    if let Some(d) = a.pages.dmabuf() {
        d.unfill(a.iova, a.length, domains);
        return;
    }
    for d in domains {
        let n = d.unmap(a.iova, a.length);
        debug_assert_eq!(n, a.length, "domain {} unmapped a short range", d.id());
    }
    if unpin {
        let (first, last) = a.page_range();
        a.pages.unpin(first, last);
    }
}

/// Step 2 of `map` with domains attached: pin and map every source at its
/// IOVA into every domain. On error nothing stays mapped or pinned.
pub(super) fn fill_sources(
    iova: u64,
    sources: &[MapSource],
    prot: Prot,
    domains: &[Arc<dyn Domain>],
    max_pgsize: u64,
) -> Result<()> {
    let mut done: Vec<AreaRef> = Vec::with_capacity(sources.len());
    let mut at = iova;
    for s in sources {
        let r = AreaRef {
            iova: at,
            length: s.length,
            pages: s.pages.clone(),
            start_byte: s.start_byte,
            prot,
        };
        if let Err(e) = fill_area(&r, domains, true, max_pgsize) {
            for r in &done {
                unfill_area(r, domains, true);
            }
            return Err(e);
        }
        at = at.wrapping_add(s.length);
        done.push(r);
    }
    Ok(())
}

/// The kernel's `iopt_calculate_iova_alignment`: recompute the alignment
/// from large pages, domains and accesses; raising it requires every area to
/// conform (`EADDRINUSE`, nothing changed).
pub(super) fn recalc_alignment(st: &mut State, attached: &Attached) -> Result<()> {
    let dom = attached.alignment();
    let new = st.base_alignment().max(dom);
    if new > st.iova_alignment {
        st.check_alignment(new)?;
    }
    st.domain_alignment = dom;
    st.iova_alignment = new;
    Ok(())
}

impl IoPagetable {
    /// Attach `domain`: reserve the IOVA outside its aperture (owner =
    /// `domain.id()`), raise the IOVA alignment to its smallest page size,
    /// pin every area's pages (once, shared with other domains) and map them.
    ///
    /// Errors, in the kernel's order: `EEXIST` (already attached), `EINVAL`
    /// (smallest page size above `PAGE_SIZE`; also an empty page-size bitmap
    /// or an empty aperture), `EADDRINUSE` (an area does not conform to the
    /// new alignment), `EADDRINUSE` (an area or an allowed range lies outside
    /// the aperture), then what pinning (`EFAULT`, `ENOMEM`) or the domain's
    /// map returns. On error nothing changes.
    pub fn add_domain(&self, domain: Arc<dyn Domain>) -> Result<()> {
        let ps = page_size();
        let id = domain.id();
        let bitmap = domain.pgsize_bitmap();
        let (ap_start, ap_last) = domain.aperture();
        if bitmap == 0 {
            bail!(EINVAL, "domain {id} supports no page size");
        }
        if ap_start > ap_last {
            bail!(
                EINVAL,
                "domain {id} has an empty aperture [{ap_start:#x}, {ap_last:#x}]"
            );
        }
        let mut attached = self.domains.write();
        if attached.domains.iter().any(|d| d.id() == id) {
            bail!(EEXIST, "domain {id} is already attached to this IOAS");
        }
        let min = 1u64 << bitmap.trailing_zeros();
        let (refs, max_pgsize) = {
            let mut st = self.state.write();
            let new_align = min.max(st.iova_alignment);
            if new_align > ps {
                bail!(
                    EINVAL,
                    "domain {id}'s smallest page size {min:#x} is above PAGE_SIZE {ps:#x}"
                );
            }
            if new_align != st.iova_alignment {
                st.check_alignment(new_align)?;
            }
            if ap_start != 0 {
                st.reserve(0, ap_start - 1, id)?;
            }
            if ap_last != u64::MAX {
                if let Err(e) = st.reserve(ap_last + 1, u64::MAX, id) {
                    st.remove_reserved_owner(id);
                    return Err(e);
                }
            }
            // Maps and unmaps hold the domains lock, so every area is live.
            debug_assert!(st.areas.values().all(|a| a.state == AreaState::Live));
            let refs: Vec<AreaRef> = st.areas.keys().map(|&k| st.area_ref(k)).collect();
            (refs, st.max_pgsize())
        };
        // Fill without the state lock; the write side of the domains lock
        // keeps the areas as they are.
        let pin = attached.domains.is_empty();
        let one = std::slice::from_ref(&domain);
        for (i, r) in refs.iter().enumerate() {
            if let Err(e) = fill_area(r, one, pin, max_pgsize) {
                for r in &refs[..i] {
                    unfill_area(r, one, pin);
                }
                self.state.write().remove_reserved_owner(id);
                return Err(e);
            }
        }
        attached.domains.push(domain);
        attached.refresh_pgsizes();
        let mut st = self.state.write();
        let r = recalc_alignment(&mut st, &attached);
        debug_assert!(r.is_ok(), "alignment was checked before the fill");
        r
    }

    /// Detach `domain` (by `id()`): unmap everything from it, unpin pages no
    /// longer used by any domain or access, drop its reserved ranges and
    /// recompute the alignment. Never fails; an unknown ID is ignored.
    pub fn remove_domain(&self, domain_id: u64) {
        let mut attached = self.domains.write();
        let Some(pos) = attached.domains.iter().position(|d| d.id() == domain_id) else {
            tracing::warn!("remove_domain: domain {domain_id} is not attached");
            return;
        };
        let domain = attached.domains.remove(pos);
        attached.refresh_pgsizes();
        let refs: Vec<AreaRef> = {
            let st = self.state.read();
            debug_assert!(st.areas.values().all(|a| a.state == AreaState::Live));
            st.areas.keys().map(|&k| st.area_ref(k)).collect()
        };
        let unpin = attached.domains.is_empty();
        let one = std::slice::from_ref(&domain);
        for r in &refs {
            unfill_area(r, one, unpin);
        }
        if attached.retired.len() == RETIRED_KEEP {
            attached.retired.pop_front();
        }
        attached.retired.push_back(domain_id);
        let mut st = self.state.write();
        st.remove_reserved_owner(domain_id);
        if let Err(e) = recalc_alignment(&mut st, &attached) {
            tracing::error!("remove_domain {domain_id}: {e}");
        }
        drop(st);
        drop(attached);
        drop(refs);
    }

    /// The page sizes every attached domain supports (the AND of their
    /// page-size bitmaps); all ones with no domain attached.
    pub fn domain_pgsizes(&self) -> u64 {
        self.domains.read().pgsizes.unwrap_or(u64::MAX)
    }

    /// Whether `f` holds for any attached domain (no list is copied).
    pub fn any_domain(&self, f: impl FnMut(&Arc<dyn Domain>) -> bool) -> bool {
        self.domains.read().domains.iter().any(f)
    }

    /// The attached domains.
    pub fn domains(&self) -> Vec<Arc<dyn Domain>> {
        self.domains.read().domains.clone()
    }

    /// Register an access for unmap notifications; returns a token for
    /// [`IoPagetable::remove_access`]. `iova_alignment` joins the IOAS alignment.
    ///
    /// `EINVAL` when `iova_alignment` is not a power of two, `EADDRINUSE`
    /// when it raises the alignment above what an existing area conforms to.
    pub fn add_access(&self, access: Weak<dyn AccessNotify>, iova_alignment: u64) -> Result<u64> {
        if !iova_alignment.is_power_of_two() {
            bail!(
                EINVAL,
                "access IOVA alignment {iova_alignment:#x} is not a power of two"
            );
        }
        // the kernel's xa_alloc of the access slot
        crate::inject::point("iopt.access.add", libc::ENOMEM)?;
        let mut attached = self.domains.write();
        let mut st = self.state.write();
        let token = attached.next_token;
        attached.next_token += 1;
        attached.accesses.insert(
            token,
            AccessEntry {
                notify: access,
                iova_alignment,
            },
        );
        if let Err(e) = recalc_alignment(&mut st, &attached) {
            attached.accesses.remove(&token);
            return Err(e);
        }
        Ok(token)
    }

    /// Unregister an access (an unknown token is ignored).
    pub fn remove_access(&self, token: u64) {
        let mut attached = self.domains.write();
        let mut st = self.state.write();
        if attached.accesses.remove(&token).is_none() {
            tracing::warn!("remove_access: token {token} is not registered");
            return;
        }
        if let Err(e) = recalc_alignment(&mut st, &attached) {
            tracing::error!("remove_access {token}: {e}");
        }
    }
}

/// Up to `n` page/IOVA points of `first..=last` (all when few): both ends
/// and evenly spaced ones between.
fn sample(first: u64, last: u64, n: u64) -> Vec<u64> {
    let span = last - first;
    if span < n {
        return (first..=last).collect();
    }
    let mut v: Vec<u64> = (0..n).map(|i| first + span / (n - 1) * i).collect();
    v.push(last);
    v.dedup();
    v
}

/// Domain `id`, whose mappings are `runs` ([`Domain::mapped_runs`]), maps
/// exactly the live areas of `st` (everything it maps lies in an area of
/// any state; live areas are fully mapped to their host addresses).
fn check_runs(
    st: &State,
    id: u64,
    runs: Vec<(Iova, HostAddr, u64)>,
) -> std::result::Result<(), String> {
    let mut covered = 0u64;
    for (Iova(iova), HostAddr(addr), len) in runs {
        let run_last = iova + (len - 1);
        let mut cur = iova;
        let mut done = false;
        for k in st.overlapping(iova, run_last) {
            let a = &st.areas[&k];
            if k > cur {
                return Err(format!(
                    "domain {id} maps iova {cur:#x} (run [{iova:#x}, {run_last:#x}]) outside every area"
                ));
            }
            let end = a.last.min(run_last);
            if a.state == AreaState::Live && a.pages.dmabuf_revoked() {
                return Err(format!(
                    "domain {id} maps iova {cur:#x} of area [{k:#x}, {:#x}], whose dma-buf was revoked",
                    a.last
                ));
            }
            if a.state == AreaState::Live {
                // every page where custody moved some (their host
                // addresses are not linear in the IOVA), else the start
                let mut at = cur;
                loop {
                    let want = a.pages.host(a.start_byte + (at - k));
                    let have = addr + (at - iova);
                    if have != want {
                        return Err(format!(
                            "domain {id} maps iova {at:#x} to {have:#x} but area [{k:#x}, {:#x}] says {want:#x}",
                            a.last
                        ));
                    }
                    let ps = page_size();
                    let next = (a.start_byte + (at - k)) / ps * ps + ps - a.start_byte + k;
                    if !a.pages.relocated() || next > end || next <= at {
                        break;
                    }
                    at = next;
                }
                covered += end - cur + 1;
            }
            if end == run_last {
                done = true;
                break;
            }
            cur = end + 1;
        }
        if !done {
            return Err(format!(
                "domain {id} maps iova {cur:#x} (run [{iova:#x}, {run_last:#x}]) outside every area"
            ));
        }
    }
    let live: u64 = st
        .areas
        .iter()
        .filter(|(_, a)| a.state == AreaState::Live && !a.pages.dmabuf_revoked())
        .map(|(&k, a)| a.length(k))
        .sum();
    if covered != live {
        return Err(format!(
            "domain {id} maps {covered:#x} bytes of the live areas, which hold {live:#x}"
        ));
    }
    Ok(())
}

/// A domain of unknown type maps the live areas (sampled per smallest page).
fn check_generic(st: &State, d: &dyn Domain) -> std::result::Result<(), String> {
    let gran = 1u64 << d.pgsize_bitmap().trailing_zeros();
    for (&k, a) in &st.areas {
        if a.state != AreaState::Live {
            continue;
        }
        let n = a.length(k) / gran;
        if n == 0 {
            continue;
        }
        let revoked = a.pages.dmabuf_revoked();
        for g in sample(0, n - 1, 32) {
            let iova = k + g * gran;
            let want = (!revoked).then(|| a.pages.host(a.start_byte + g * gran));
            let have = d.iova_to_phys(Iova(iova)).map(|h| h.0);
            if have != want {
                return Err(format!(
                    "domain {} translates iova {iova:#x} to {have:#x?}, area [{k:#x}, {:#x}] says {want:#x?}",
                    d.id(),
                    a.last
                ));
            }
        }
    }
    Ok(())
}

/// The invariants of domains, accesses and pins (see `check_invariants`).
pub(super) fn check(st: &State, attached: &Attached) -> std::result::Result<(), String> {
    let pgsizes = attached.pgsizes_of_domains();
    if attached.pgsizes != pgsizes {
        return Err(format!(
            "the attached domains support page sizes {pgsizes:#x?}, the list records {:#x?}",
            attached.pgsizes
        ));
    }
    let want = attached.alignment();
    if st.domain_alignment != want {
        return Err(format!(
            "the domains and accesses ask for alignment {want:#x}, the table records {:#x}",
            st.domain_alignment
        ));
    }
    for d in &attached.domains {
        let id = d.id();
        let (s, l) = d.aperture();
        let mut expect = Vec::new();
        if s != 0 {
            expect.push((0, s - 1));
        }
        if l != u64::MAX {
            expect.push((l + 1, u64::MAX));
        }
        let mut have: Vec<(u64, u64)> = st
            .reserved
            .iter()
            .filter(|r| r.owner == id)
            .map(|r| (r.start, r.last))
            .collect();
        have.sort_unstable();
        if have != expect {
            return Err(format!(
                "domain {id} with aperture [{s:#x}, {l:#x}] owns reserved ranges {have:#x?}, expected {expect:#x?}"
            ));
        }
    }
    if let Some(r) = st
        .reserved
        .iter()
        .find(|r| attached.retired.contains(&r.owner))
    {
        return Err(format!(
            "reserved range [{:#x}, {:#x}] of removed domain {} remains",
            r.start, r.last, r.owner
        ));
    }
    for d in &attached.domains {
        match d.mapped_runs() {
            Some(runs) => check_runs(st, d.id(), runs)?,
            None => check_generic(st, d.as_ref())?,
        }
    }

    // Pins.
    let have_domains = !attached.domains.is_empty();
    let mut groups: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (&k, a) in &st.areas {
        groups.entry(a.pages.id()).or_default().push(k);
        let (f, l) = a.page_range(k);
        for (&(af, al), &n) in a.accesses.lock().iter() {
            if n == 0 || af < f || al > l || a.state != AreaState::Live {
                return Err(format!(
                    "area [{k:#x}, {:#x}] (pages {f}..={l}, {:?}) records access pin {af}..={al} x{n}",
                    a.last, a.state
                ));
            }
            for p in sample(af, al, 4) {
                if !a.pages.is_pinned(p) {
                    return Err(format!(
                        "page {p} of pages object {} is not pinned but an access pinned it through area {k:#x}",
                        a.pages.id()
                    ));
                }
            }
        }
        if a.state == AreaState::Live {
            check_dmabuf_tracks(k, a, attached)?;
        }
        if have_domains && a.state == AreaState::Live && !a.pages.is_dmabuf() {
            for p in sample(f, l, 16) {
                if !a.pages.is_pinned(p) {
                    return Err(format!(
                        "page {p} of pages object {} is mapped by live area [{k:#x}, {:#x}] into a domain but is \
                         not pinned",
                        a.pages.id(),
                        a.last
                    ));
                }
            }
        }
    }
    // Pages objects only this table holds: exact user counts.
    for keys in groups.values() {
        let pages = &st.areas[&keys[0]].pages;
        if keys.iter().any(|k| st.areas[k].state != AreaState::Live)
            || Arc::strong_count(pages) != keys.len()
        {
            continue;
        }
        if let Some(d) = pages.dmabuf() {
            // never pinned (`check_backing`); tracked once per area and domain
            let want = keys.len() * attached.domains.len();
            if d.ntracked() != want {
                return Err(format!(
                    "dma-buf pages object {} tracks {} domain fill(s), expected {want} ({} area(s) x {} domain(s))",
                    pages.id(),
                    d.ntracked(),
                    keys.len(),
                    attached.domains.len()
                ));
            }
            continue;
        }
        let mut points = BTreeSet::new();
        for &k in keys {
            let a = &st.areas[&k];
            let (f, l) = a.page_range(k);
            points.extend(sample(f, l, 8));
            points.insert(f.saturating_sub(1));
            points.insert(l + 1);
            for &(af, al) in a.accesses.lock().keys() {
                points.extend([af.saturating_sub(1), af, al, al + 1]);
            }
        }
        for p in points.into_iter().filter(|&p| p < pages.npages()) {
            let mut expect = 0u32;
            for &k in keys {
                let a = &st.areas[&k];
                let (f, l) = a.page_range(k);
                if have_domains && f <= p && p <= l {
                    expect += 1;
                }
                for (&(af, al), &n) in a.accesses.lock().iter() {
                    if af <= p && p <= al {
                        expect += n;
                    }
                }
            }
            let have = pages.pin_count(p);
            if have != expect {
                return Err(format!(
                    "page {p} of pages object {} has {have} pin user(s), expected {expect} (domains attached: \
                     {have_domains}, areas {keys:#x?})",
                    pages.id()
                ));
            }
        }
    }
    Ok(())
}

/// A live area of dma-buf pages is tracked for every attached domain, with
/// its length (so that a revocation unmaps it from each).
fn check_dmabuf_tracks(
    k: u64,
    a: &super::Area,
    attached: &Attached,
) -> std::result::Result<(), String> {
    let Some(d) = a.pages.dmabuf() else {
        return Ok(());
    };
    for dom in &attached.domains {
        let len = a.length(k);
        if d.tracked(dom.id(), k) != Some(len) {
            return Err(format!(
                "dma-buf area [{k:#x}, {:#x}] is not tracked for domain {} with length {len:#x} (have {:#x?})",
                a.last,
                dom.id(),
                d.tracked(dom.id(), k)
            ));
        }
    }
    Ok(())
}
