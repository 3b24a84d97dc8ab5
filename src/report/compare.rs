//! Two windows of records side by side: which endpoints appeared, got worse, improved or
//! disappeared.

use super::Window;
use std::collections::BTreeMap;

/// How an endpoint's record count moved from the first window to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// No records before, some now.
    Appeared,
    /// More records than before.
    Worse,
    /// Fewer records than before, but some.
    Improved,
    /// Records before, none now.
    Disappeared,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Appeared => "appeared",
            Verdict::Worse => "worse",
            Verdict::Improved => "improved",
            Verdict::Disappeared => "disappeared",
        }
    }

    fn of(before: u64, after: u64) -> Option<Verdict> {
        match (before, after) {
            (0, 0) => None,
            (0, _) => Some(Verdict::Appeared),
            (_, 0) => Some(Verdict::Disappeared),
            (b, a) if a > b => Some(Verdict::Worse),
            (b, a) if a < b => Some(Verdict::Improved),
            _ => None,
        }
    }
}

/// One endpoint whose record count changed.
#[derive(Debug, Clone)]
pub struct Change {
    pub route: String,
    pub method: String,
    pub template: String,
    pub before: u64,
    pub after: u64,
    pub verdict: Verdict,
}

impl Change {
    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

/// The endpoints whose counts changed, appeared first, then worse, improved, disappeared;
/// within each, the biggest change first.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// What the first window is (`OLD.jsonl`, `before 2026-11-20T00:00:00.000Z`).
    pub before_label: String,
    pub after_label: String,
    pub before_records: u64,
    pub after_records: u64,
    pub changes: Vec<Change>,
    /// Endpoints with the same count in both windows.
    pub unchanged: usize,
}

impl Comparison {
    pub fn new(before: &Window, after: &Window, labels: (String, String)) -> Comparison {
        // (route, method, template) -> (before, after)
        let mut counts: BTreeMap<(&str, &str, &str), (u64, u64)> = BTreeMap::new();
        for e in before.endpoints() {
            counts
                .entry((&e.route, &e.method, &e.template))
                .or_default()
                .0 += e.tally.count;
        }
        for e in after.endpoints() {
            counts
                .entry((&e.route, &e.method, &e.template))
                .or_default()
                .1 += e.tally.count;
        }
        let mut unchanged = 0;
        let mut changes = Vec::new();
        for ((route, method, template), (b, a)) in counts {
            match Verdict::of(b, a) {
                Some(verdict) => changes.push(Change {
                    route: route.to_string(),
                    method: method.to_string(),
                    template: template.to_string(),
                    before: b,
                    after: a,
                    verdict,
                }),
                None => unchanged += 1,
            }
        }
        changes.sort_by(|x, y| {
            x.verdict
                .cmp(&y.verdict)
                .then_with(|| y.before.abs_diff(y.after).cmp(&x.before.abs_diff(x.after)))
                .then_with(|| (&x.route, &x.template).cmp(&(&y.route, &y.template)))
        });
        Comparison {
            before_label: labels.0,
            after_label: labels.1,
            before_records: before.records(),
            after_records: after.records(),
            changes,
            unchanged,
        }
    }
}
