//! `uiommufd bench [--json] [--threads N] [--quick]`: what the engine costs
//! next to the physical floor of the same work, measured in the same run.
//!
//! Every case prints our number, its floor (what the kernel or the CPU
//! needs at least for the same bytes or pages: `MADV_POPULATE_WRITE`,
//! `memcpy`) and the ratio, from medians of repeated runs. `--json` prints
//! the same rows as one JSON document, for comparisons across commits
//! (case IDs are stable; sizes are in the rows).
//! `UIOMMUFD_BENCH_PROGRESS=1` prints each row on stderr as it is measured.
//!
//! | case | what |
//! |---|---|
//! | 1 | map+unmap of one 4 KiB page: Rust API (0/1 mock domain), dispatcher, ioctl through the preload |
//! | 2 | 1 GiB map into an IOAS with 0/1/2 mock domains, 4 KiB and THP backing, present and fresh memory |
//! | 3 | `IOAS_COPY` of 1 GiB into a second IOAS, and the pin delta (none) |
//! | 4 | map/unmap from 1, 2 (and `--threads N`) threads on one IOAS |
//! | 5 | access read/write by IOVA (64 KiB, 4 MiB; 8 B among 1024 areas) |
//! | 6 | dirty bitmap read+clear of 1 GiB (the mock aperture's limit) at 0-100% dirty |
//! | 7 | map/unmap cost as the IOAS grows from 10^2 to 10^6 areas |
//! | 8 | the software IOMMU (VT-d domain): translate, DMA by IOVA, dirty read per GiB, 1 GiB map with 1/2 domains |
//! | 9 | one dirty read of a 1 GiB guest per tracker, cold (after a 512 MiB sweep) and warm, as `migrate` makes it |

mod cases;
mod cold;
mod dirty;
mod growth;
mod preload;
mod util;
mod vtd;

use std::fmt::Write as _;

use serde_json::{json, Value};

/// Command-line options of `uiommufd bench`.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Print JSON instead of the table.
    pub json: bool,
    /// An extra thread count for case 4 (1 and 2 are always measured).
    pub threads: Option<usize>,
    /// Smaller sizes and fewer repetitions: a ~20 s smoke run.
    pub quick: bool,
    /// Run only these case numbers (all when empty): for profiling one case.
    pub only: Vec<u8>,
}

/// Sizes and repetition counts of one run.
#[derive(Debug, Clone)]
pub struct Scale {
    /// Repetitions of every small timing (the median is kept).
    pub reps: usize,
    /// Repetitions of the large (GiB) timings.
    pub large_reps: usize,
    /// Operations per small timing.
    pub iters: u64,
    /// The "1 GiB" of cases 2 and 3.
    pub large: u64,
    /// The IOVA span of case 6 (64 GiB: `large` mapped again and again).
    pub dirty_span: u64,
    /// Map+unmap pairs per thread in case 4.
    pub thread_iters: u64,
    /// Thread counts of case 4.
    pub threads: Vec<usize>,
    /// Largest power of ten of areas in case 7.
    pub growth_max_exp: u32,
    /// Largest power of ten of areas made by separate `IOAS_MAP`s in case 7.
    pub growth_pages_max_exp: u32,
}

impl Scale {
    fn new(o: &Opts) -> Scale {
        let mut threads = vec![1, 2];
        if let Some(n) = o.threads.filter(|n| *n > 2) {
            threads.push(n);
        }
        if o.quick {
            Scale {
                reps: 5,
                large_reps: 3,
                iters: 500,
                large: 64 << 20,
                dirty_span: 1 << 30,
                thread_iters: 2000,
                threads,
                growth_max_exp: 4,
                growth_pages_max_exp: 3,
            }
        } else {
            Scale {
                reps: 15,
                large_reps: 7,
                iters: 4000,
                large: 1 << 30,
                dirty_span: 64 << 30,
                thread_iters: 50_000,
                threads,
                growth_max_exp: 6,
                growth_pages_max_exp: 5,
            }
        }
    }
}

/// What a number measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds per operation (lower is better).
    NsPerOp,
    /// Milliseconds per operation (lower is better).
    Ms,
    /// 10^9 bytes per second (higher is better).
    GBps,
    /// Thousands of operations per second (higher is better).
    KOpsPerSec,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::NsPerOp => "ns/op",
            Unit::Ms => "ms",
            Unit::GBps => "GB/s",
            Unit::KOpsPerSec => "kop/s",
        }
    }

    fn higher_is_better(self) -> bool {
        matches!(self, Unit::GBps | Unit::KOpsPerSec)
    }
}

/// What a row's ratio compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatioKind {
    /// Our time over the floor's time (1.0 = at the floor; higher is slower).
    VsFloor,
    /// Throughput over the 1-thread throughput (the scaling factor).
    SpeedupVs1Thread,
    /// Time per op over the time per op at the smallest size.
    VsSmallest,
    /// No ratio.
    None,
}

impl RatioKind {
    fn name(self) -> &'static str {
        match self {
            RatioKind::VsFloor => "vs_floor",
            RatioKind::SpeedupVs1Thread => "speedup_vs_1_thread",
            RatioKind::VsSmallest => "vs_smallest",
            RatioKind::None => "none",
        }
    }
}

/// One measured case.
#[derive(Debug, Clone)]
pub struct Row {
    /// Stable ID (`<case>.<what>`), for comparisons across commits.
    pub id: String,
    /// The case number of the module table.
    pub case: u8,
    /// What was measured, for people.
    pub what: String,
    /// The unit of `ours` and `floor`.
    pub unit: Unit,
    /// Our number.
    pub ours: f64,
    /// The floor, in the same unit, and what it is.
    pub floor: Option<(f64, String)>,
    /// The ratio and what it compares.
    pub ratio: Option<f64>,
    /// What `ratio` compares.
    pub ratio_kind: RatioKind,
    /// Anything else worth printing (sizes, pin deltas).
    pub note: String,
}

impl Row {
    /// A row with a floor: the ratio is "times slower than the floor".
    pub fn vs_floor(
        id: impl Into<String>,
        case: u8,
        what: impl Into<String>,
        unit: Unit,
        ours: f64,
        floor: f64,
        floor_what: impl Into<String>,
    ) -> Row {
        let ratio = if unit.higher_is_better() {
            floor / ours
        } else {
            ours / floor
        };
        Row {
            floor: Some((floor, floor_what.into())),
            ..Row::plain(id, case, what, unit, ours)
        }
        .ratio(RatioKind::VsFloor, ratio)
    }

    /// A row without a floor.
    pub fn plain(
        id: impl Into<String>,
        case: u8,
        what: impl Into<String>,
        unit: Unit,
        ours: f64,
    ) -> Row {
        Row {
            id: id.into(),
            case,
            what: what.into(),
            unit,
            ours,
            floor: None,
            ratio: None,
            ratio_kind: RatioKind::None,
            note: String::new(),
        }
    }

    /// Set the ratio and its kind.
    pub fn ratio(mut self, kind: RatioKind, r: f64) -> Row {
        self.ratio_kind = kind;
        self.ratio = Some(r);
        self
    }

    /// Add a note.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }
}

/// A reference number from elsewhere (a C userspace DMA library measured on
/// this machine kind), printed under the case it compares with.
struct Reference {
    case: u8,
    what: &'static str,
    value: f64,
    unit: &'static str,
    compare_with: &'static str,
}

/// The reference numbers of the issue: a C userspace DMA library (vfio-user
/// servers) and the floors, measured on this machine kind.
const REFERENCES: &[Reference] = &[
    Reference {
        case: 1,
        what: "C vfio-user library: DMA region add+remove (328-341 ns when measured again; 467 ns was stale)",
        value: 335.0,
        unit: "ns/op",
        compare_with: "1.map_unmap_4k.rust.0dom; 1.map_unmap_4k.preload_ioctl.0dom (target: <= 1.3x the Rust API row)",
    },
    Reference {
        case: 5,
        what: "C vfio-user library: IOVA->pointer among 1024 regions",
        value: 70.0,
        unit: "ns/op",
        compare_with: "5.rw.8b.1024areas (ours also copies 8 bytes)",
    },
    Reference {
        case: 5,
        what: "C vfio-user library: IOVA->pointer, same-region hit",
        value: 4.0,
        unit: "ns/op",
        compare_with: "5.rw.8b.1024areas",
    },
    Reference {
        case: 6,
        what: "C vfio-user library: 1 GiB dirty bitmap get, 4 KiB pages, 0% dirty (ours covers 64 GiB: divide by 64)",
        value: 0.026,
        unit: "ms",
        compare_with: "6.dirty.rust.0%",
    },
    Reference {
        case: 6,
        what: "C vfio-user library: 1 GiB dirty bitmap get, 1% dirty (ours: 0.1%, 64 GiB)",
        value: 0.044,
        unit: "ms",
        compare_with: "6.dirty.rust.0.1%",
    },
    Reference {
        case: 6,
        what: "C vfio-user library: 1 GiB dirty bitmap get, 100% dirty (ours covers 64 GiB)",
        value: 0.087,
        unit: "ms",
        compare_with: "6.dirty.rust.100%",
    },
    Reference {
        case: 8,
        what: "target: translate hit",
        value: 4.0,
        unit: "ns/op",
        compare_with: "8.vtd.translate.hit",
    },
    Reference {
        case: 8,
        what: "target: translate at a random one of 1024 mappings (C vfio-user library: 70 ns)",
        value: 35.0,
        unit: "ns/op",
        compare_with: "8.vtd.translate.1024",
    },
    Reference {
        case: 8,
        what: "target: dirty read-and-clear per GiB at 4 KiB pages, 0% / 1% / 100% dirty: 0.013 / 0.027 / 0.266 ms (C library: 0.026 / 0.044 / 0.087)",
        value: 0.013,
        unit: "ms",
        compare_with: "8.vtd.dirty.*",
    },
    Reference {
        case: 8,
        what: "target: map 1 GiB of present 4 KiB memory with 2 domains (the second <= 2 ns per page)",
        value: 17.0,
        unit: "ms",
        compare_with: "8.vtd.map_1g.4k.2dom, 8.vtd.map_1g.4k.second_dom",
    },
    Reference {
        case: 8,
        what: "target: nested translate hit, as flat",
        value: 4.0,
        unit: "ns/op",
        compare_with: "8.vtd.nested.translate.hit",
    },
    Reference {
        case: 8,
        what: "target: nested translate miss (4 + 4 levels)",
        value: 150.0,
        unit: "ns/op",
        compare_with: "8.vtd.nested.translate.miss",
    },
    Reference {
        case: 5,
        what: "floor: memcpy 64 KiB",
        value: 44.0,
        unit: "GB/s",
        compare_with: "5.rw.64k.* floor",
    },
    Reference {
        case: 5,
        what: "floor: memcpy 64 MiB",
        value: 8.0,
        unit: "GB/s",
        compare_with: "5.rw.4m.* floor (4 MiB still fits in L2+L3)",
    },
    Reference {
        case: 2,
        what: "floor: MADV_POPULATE_WRITE of 1 GiB, 4 KiB pages",
        value: 2.1,
        unit: "GB/s",
        compare_with: "2.map_1g.4k.*.fresh floor",
    },
    Reference {
        case: 2,
        what: "floor: MADV_POPULATE_WRITE of 1 GiB, THP",
        value: 9.6,
        unit: "GB/s",
        compare_with: "2.map_1g.thp.*.fresh floor",
    },
];

/// Everything one run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// Measured rows, in case order.
    pub rows: Vec<Row>,
    /// Cases or rows not measured, and why.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// Add a row (and say so on stderr, so a long run shows progress).
    pub fn push(&mut self, row: Row) {
        if std::env::var_os("UIOMMUFD_BENCH_PROGRESS").is_some() {
            eprintln!("  {} {:.3} {}", row.id, row.ours, row.unit.name());
        }
        self.rows.push(row);
    }

    /// Record a case or row that could not be measured.
    pub fn skip(&mut self, id: impl Into<String>, why: impl Into<String>) {
        self.skipped.push((id.into(), why.into()));
    }
}

/// Run the benchmarks and print the table or the JSON.
pub fn bench(o: Opts) -> Result<(), String> {
    let scale = Scale::new(&o);
    let memlock = util::raise_memlock();
    let mut r = Report::default();
    let t0 = std::time::Instant::now();

    type Step = fn(&Scale, &mut Report) -> Result<(), String>;
    let steps: [(u8, Step); 10] = [
        (1, cases::map_one_page),
        (1, preload::preload_ioctl),
        (2, cases::map_large),
        (3, cases::copy_large),
        (4, cases::threads),
        (5, cases::access_rw),
        (6, dirty::dirty),
        (7, growth::growth),
        (8, vtd::vtd),
        (9, cold::cold),
    ];
    for (case, f) in steps {
        if !o.only.is_empty() && !o.only.contains(&case) {
            continue;
        }
        if let Err(e) = f(&scale, &mut r) {
            r.skip(format!("{case}.*"), format!("failed: {e}"));
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();

    if o.json {
        println!("{}", to_json(&o, &scale, &r, elapsed, memlock));
    } else {
        print!("{}", to_table(&o, &scale, &r, elapsed, memlock));
    }
    Ok(())
}

fn header(o: &Opts, s: &Scale, elapsed: f64, memlock: Option<u64>) -> Vec<(&'static str, Value)> {
    vec![
        (
            "tool",
            json!(format!("uiommufd {}", env!("CARGO_PKG_VERSION"))),
        ),
        ("machine", json!(util::machine())),
        ("kernel", json!(kernel())),
        ("loadavg_at_end", json!(loadavg())),
        ("thp", json!(util::thp_mode())),
        ("quick", json!(o.quick)),
        ("large_bytes", json!(s.large)),
        ("reps", json!(s.reps)),
        ("memlock_limit", json!(memlock)),
        ("debug_build", json!(cfg!(debug_assertions))),
        ("elapsed_s", json!((elapsed * 10.0).round() / 10.0)),
    ]
}

/// The 1-minute load average: other work on the machine skews timings.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn to_json(o: &Opts, s: &Scale, r: &Report, elapsed: f64, memlock: Option<u64>) -> String {
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            json!({
                "id": row.id,
                "case": row.case,
                "what": row.what,
                "unit": row.unit.name(),
                "ours": row.ours,
                "floor": row.floor.as_ref().map(|f| f.0),
                "floor_what": row.floor.as_ref().map(|f| f.1.clone()),
                "ratio": row.ratio,
                "ratio_kind": row.ratio_kind.name(),
                "note": row.note,
            })
        })
        .collect();
    let skipped: Vec<Value> = r
        .skipped
        .iter()
        .map(|(id, why)| json!({"id": id, "reason": why}))
        .collect();
    let refs: Vec<Value> = REFERENCES
        .iter()
        .map(|x| {
            json!({"case": x.case, "what": x.what, "value": x.value, "unit": x.unit,
                   "compare_with": x.compare_with})
        })
        .collect();
    let mut doc = serde_json::Map::new();
    for (k, v) in header(o, s, elapsed, memlock) {
        doc.insert(k.into(), v);
    }
    doc.insert("rows".into(), Value::Array(rows));
    doc.insert("skipped".into(), Value::Array(skipped));
    doc.insert("references".into(), Value::Array(refs));
    serde_json::to_string_pretty(&Value::Object(doc)).unwrap_or_default()
}

/// A number with about four significant digits.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

fn to_table(o: &Opts, s: &Scale, r: &Report, elapsed: f64, memlock: Option<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "uiommufd bench");
    for (k, v) in header(o, s, elapsed, memlock) {
        let v = match v {
            Value::String(s) => s,
            v => v.to_string(),
        };
        let _ = writeln!(out, "  {k}: {v}");
    }
    let _ = writeln!(out);
    let w = r
        .rows
        .iter()
        .map(|x| x.id.len())
        .max()
        .unwrap_or(10)
        .max(10);
    let _ = writeln!(
        out,
        "{:<w$}  {:>10}  {:>10}  {:<6}  {:>8}  what (floor) note",
        "case", "ours", "floor", "unit", "ratio"
    );
    let mut last_case = 0;
    for row in &r.rows {
        if row.case != last_case && last_case != 0 {
            refs_of(&mut out, last_case);
        }
        last_case = row.case;
        let floor = row.floor.as_ref().map_or("-".into(), |f| num(f.0));
        let ratio = match (row.ratio, row.ratio_kind) {
            (Some(x), RatioKind::VsFloor) => format!("{x:.2}x"),
            (Some(x), RatioKind::SpeedupVs1Thread) => format!("s={x:.2}"),
            (Some(x), RatioKind::VsSmallest) => format!("g={x:.2}"),
            _ => "-".into(),
        };
        let mut what = row.what.clone();
        if let Some((_, fw)) = &row.floor {
            let _ = write!(what, " (floor: {fw})");
        }
        if !row.note.is_empty() {
            let _ = write!(what, "; {}", row.note);
        }
        let _ = writeln!(
            out,
            "{:<w$}  {:>10}  {:>10}  {:<6}  {:>8}  {}",
            row.id,
            num(row.ours),
            floor,
            row.unit.name(),
            ratio,
            what
        );
    }
    if last_case != 0 {
        refs_of(&mut out, last_case);
    }
    for c in [6u8] {
        if !r.rows.iter().any(|x| x.case == c) {
            refs_of(&mut out, c);
        }
    }
    let _ = writeln!(
        out,
        "\nratio: x = ours/floor in time (1.00x = at the floor); s = throughput over 1 thread; g = time per op over the smallest IOAS"
    );
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "\nnot measured:");
        for (id, why) in &r.skipped {
            let _ = writeln!(out, "  {id}: {why}");
        }
    }
    out
}

fn refs_of(out: &mut String, case: u8) {
    for x in REFERENCES.iter().filter(|x| x.case == case) {
        let _ = writeln!(
            out,
            "  [ref] {}: {} {} (compare: {})",
            x.what,
            num(x.value),
            x.unit,
            x.compare_with
        );
    }
}
