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

/// One endpoint whose record count changed: of the service's statuses, or of those restatus
/// made itself (`by_proxy`), counted apart so that a service that went from not answering to
/// answering wrongly does not read as unchanged.
#[derive(Debug, Clone)]
pub struct Change {
    pub route: String,
    pub method: String,
    pub template: String,
    pub by_proxy: bool,
    pub before: u64,
    pub after: u64,
    pub verdict: Verdict,
}

impl Change {
    pub fn name(&self) -> String {
        let by = if self.by_proxy {
            " (statuses made by restatus)"
        } else {
            ""
        };
        format!("{} {}{by}", self.method, self.template)
    }
}

/// (route, method, template, made by restatus) -> (records before, records after)
type Counts<'a> = BTreeMap<(&'a str, &'a str, &'a str, bool), (u64, u64)>;

/// Adds `window`'s records to `counts`, in the first slot of each pair or the second.
fn count<'a>(counts: &mut Counts<'a>, window: &'a Window, after: bool) {
    for e in window.endpoints() {
        for g in &e.groups {
            let slot = counts
                .entry((&e.route, &e.method, &e.template, g.by_proxy))
                .or_default();
            *(if after { &mut slot.1 } else { &mut slot.0 }) += g.tally.count;
        }
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
        let mut counts = Counts::new();
        count(&mut counts, before, false);
        count(&mut counts, after, true);
        // Endpoints, and whether any of their counts changed.
        let mut endpoints: BTreeMap<(&str, &str, &str), bool> = BTreeMap::new();
        let mut changes = Vec::new();
        for ((route, method, template, by_proxy), (b, a)) in counts {
            let verdict = Verdict::of(b, a);
            *endpoints.entry((route, method, template)).or_default() |= verdict.is_some();
            if let Some(verdict) = verdict {
                changes.push(Change {
                    route: route.to_string(),
                    method: method.to_string(),
                    template: template.to_string(),
                    by_proxy,
                    before: b,
                    after: a,
                    verdict,
                });
            }
        }
        let unchanged = endpoints.values().filter(|changed| !**changed).count();
        changes.sort_by(|x, y| {
            x.verdict
                .cmp(&y.verdict)
                .then_with(|| y.before.abs_diff(y.after).cmp(&x.before.abs_diff(x.after)))
                .then_with(|| {
                    (&x.route, &x.template, x.by_proxy).cmp(&(&y.route, &y.template, y.by_proxy))
                })
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
