//! Route compilation and matching with Kong 3's `traditional_compatible` semantics: hosts (exact,
//! `*.suffix`, `prefix.*`, optional `:port`; case-sensitive, as Kong documents), path prefixes and
//! `~` regexes, methods, headers, and Kong's priority (attribute count, plain hosts, header count,
//! regex, regex_priority, prefix length).
//!
//! Hand-written rather than a generic router crate because the hot path needs Kong's exact priority
//! order with an index: candidates come from a host hash bucket and from a prefix table probed only at
//! the prefix lengths that exist, so 10,000 routes cost a handful of hash lookups, not a scan.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::paths::split_port;
pub use crate::paths::{normalize_path, request_host, route_host};

type Hasher = foldhash::fast::RandomState;

/// A route as the router needs it. `T` is what a match hands back (the compiled target).
#[derive(Debug, Clone)]
pub struct RouteSpec<T> {
    pub methods: Vec<String>,
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub headers: Vec<(String, Vec<String>)>,
    /// Server names a TLS request must have asked for (ignored in cleartext, as in Kong).
    pub snis: Vec<String>,
    pub regex_priority: i64,
    pub target: T,
}

/// The request attributes a route can match on.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host without port, in the case the client sent (see [`route_host`]).
    pub host: &'a str,
    /// The port the request arrived on.
    pub port: u16,
    /// TLS: the server name asked for (`""` without SNI); `None` in cleartext.
    pub sni: Option<&'a str>,
    /// Normalized path (see [`normalize_path`]).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// The winning route and how much of the path it matched.
#[derive(Debug)]
pub struct Match<'r, T> {
    pub target: &'r T,
    /// Bytes of the normalized path matched by the route's path (0 without a path).
    pub matched_len: usize,
    /// The route prefix that matched (plain prefixes only), for `X-Forwarded-Prefix`.
    pub prefix: Option<&'r str>,
    /// The path regex that matched (regex paths only), for its captures.
    pub regex: Option<&'r Regex>,
}

/// Kong's route priority; compared field by field (larger wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Priority {
    weight: u8,
    plain_hosts: bool,
    headers: u8,
    regex: bool,
    regex_priority: i64,
    prefix_len: u32,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Prefix(Box<str>),
    /// A regex and, when every path it can match starts with one of a few literals (`/orders/`
    /// for `~/orders/\d+$`), those literals: the router looks it up by them instead of trying it
    /// on every request.
    Regex(Regex, Option<Box<[Box<str>]>>),
}

#[derive(Debug, Clone)]
enum HeaderValueMatch {
    /// Lower-cased exact values.
    Exact(Vec<String>),
    Regex(Regex),
}

/// A route's matching attributes, compiled once (methods parsed, regexes built) and kept between
/// router builds: compiling is where a route can fail, so it happens when a route is written or
/// loaded, and assembling a router from compiled routes cannot fail.
#[derive(Debug)]
pub struct RouteMatcher {
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValueMatch)>,
    /// One per route path (`Any` for a path-less route), each with its own priority.
    paths: Vec<(PathMatch, Priority)>,
    /// Host patterns and the port each demands (`None`: any host).
    hosts: Vec<(HostPattern, Option<u16>)>,
    /// Lower-cased server names; a TLS request must have asked for one of them.
    snis: Box<[Box<str>]>,
}

#[derive(Debug, Clone)]
enum HostPattern {
    Any,
    Exact(Box<str>),
    /// `*.example.com` → `.example.com`
    Suffix(Box<str>),
    /// `example.*` → `example.`
    Prefix(Box<str>),
}

/// Why a route's attributes cannot be compiled, and which field is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RouteError {
    pub field: &'static str,
    pub message: String,
}

/// Longest prefix length kept in a priority (longer prefixes rank alike).
const MAX_PREFIX_RANK: usize = 0x7FFFF;

impl RouteMatcher {
    /// Compiles the matching attributes of one route.
    pub fn compile<T>(spec: &RouteSpec<T>) -> Result<RouteMatcher, RouteError> {
        let fail = |field: &'static str| move |message: String| RouteError { field, message };
        let methods = if spec.methods.is_empty() {
            None
        } else {
            Some(
                spec.methods
                    .iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| fail("methods")(e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let mut headers = Vec::with_capacity(spec.headers.len());
        for (name, values) in &spec.headers {
            let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|e| fail("headers")(e.to_string()))?;
            let matcher = match values.iter().find_map(|v| v.strip_prefix("~*")) {
                Some(re) => HeaderValueMatch::Regex(
                    regex::RegexBuilder::new(re)
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| fail("headers")(regex_message(re, &e)))?,
                ),
                None => HeaderValueMatch::Exact(values.iter().map(|v| v.to_ascii_lowercase()).collect()),
            };
            headers.push((name, matcher));
        }
        let weight = [
            !spec.methods.is_empty(),
            !spec.hosts.is_empty(),
            !spec.headers.is_empty(),
            !spec.snis.is_empty(),
            !spec.paths.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count() as u8;
        let base = Priority {
            weight,
            plain_hosts: !spec.hosts.is_empty() && spec.hosts.iter().all(|h| !h.contains('*')),
            headers: u8::try_from(spec.headers.len()).unwrap_or(u8::MAX),
            regex: false,
            regex_priority: 0,
            prefix_len: 0,
        };
        let paths = if spec.paths.is_empty() {
            vec![(PathMatch::Any, base)]
        } else {
            spec.paths
                .iter()
                .map(|p| match p.strip_prefix('~') {
                    Some(re) => Regex::new(&format!("^(?:{re})"))
                        .map(|r| {
                            let priority = Priority { regex: true, regex_priority: spec.regex_priority, ..base };
                            (PathMatch::Regex(r, literal_prefixes(re)), priority)
                        })
                        .map_err(|e| fail("paths")(regex_message(re, &e))),
                    None => {
                        let rank = u32::try_from(p.len().min(MAX_PREFIX_RANK)).unwrap_or(u32::MAX);
                        Ok((PathMatch::Prefix(p.as_str().into()), Priority { prefix_len: rank, ..base }))
                    }
                })
                .collect::<Result<_, _>>()?
        };
        let hosts = if spec.hosts.is_empty() {
            vec![(HostPattern::Any, None)]
        } else {
            spec.hosts
                .iter()
                .map(|h| {
                    let (host, port) = split_port(h);
                    let pattern = if let Some(suffix) = host.strip_prefix('*') {
                        HostPattern::Suffix(suffix.into())
                    } else if let Some(prefix) = host.strip_suffix('*') {
                        HostPattern::Prefix(prefix.into())
                    } else {
                        HostPattern::Exact(host.into())
                    };
                    (pattern, port)
                })
                .collect()
        };
        let snis = spec.snis.iter().map(|s| s.to_ascii_lowercase().into_boxed_str()).collect();
        Ok(RouteMatcher { methods, headers, paths, hosts, snis })
    }
}

/// Most literals a regex is indexed under; one with more alternatives is tried on every request.
const MAX_REGEX_LITERALS: usize = 16;

/// The literals every match of `re` (anchored at the start of the path) begins with, when there are
/// few and none is empty: `/orders/` for `/orders/\d+$`, `/a` and `/b` for `/a|/b`.
fn literal_prefixes(re: &str) -> Option<Box<[Box<str>]>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::parse(&format!("^(?:{re})")).ok()?;
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix).limit_total(MAX_REGEX_LITERALS * 8);
    let seq = extractor.extract(&hir);
    let literals = seq.literals()?;
    if literals.is_empty() || literals.len() > MAX_REGEX_LITERALS {
        return None;
    }
    literals.iter().map(|l| std::str::from_utf8(l.as_bytes()).ok().filter(|s| !s.is_empty()).map(Box::from)).collect()
}

/// Kong's wording for a regex that does not compile.
fn regex_message(re: &str, e: &regex::Error) -> String {
    let detail = e.to_string();
    let line = detail.lines().rev().find(|l| l.starts_with("error:")).or_else(|| detail.lines().next()).unwrap_or("");
    format!("invalid regex: '{re}' (PCRE returned: {line})")
}

/// One (route, path) pair: where a request's path is checked, with that path's priority, and what
/// a match hands back.
#[derive(Debug)]
struct Entry<T> {
    priority: Priority,
    /// The route's place among routes of equal priority (smaller wins).
    order: u128,
    path: PathMatch,
    matcher: Arc<RouteMatcher>,
    target: T,
}

/// An entry placed in a host bucket, with the port its host entry demanded.
#[derive(Debug)]
struct Slot<T> {
    entry: Arc<Entry<T>>,
    port: Option<u16>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot { entry: self.entry.clone(), port: self.port }
    }
}

/// Slots best first; shared between routers until an edit touches them.
type SlotList<T> = Arc<Vec<Slot<T>>>;

/// Slots by a key of their path (a prefix, or a literal a regex's matches begin with). Keys and
/// lists are shared, so copying a table of 10,000 prefixes for an edit allocates nothing per key.
type SlotTable<T> = HashMap<Arc<str>, SlotList<T>, Hasher>;

/// Buckets by host (or host suffix, or prefix); keys shared between a router and its edits.
type BucketTable<T> = HashMap<Arc<str>, Arc<Bucket<T>>, Hasher>;

/// A wildcard host of another shape: `(pattern, is a suffix, bucket)`.
type OddWildcard<T> = (Box<str>, bool, Arc<Bucket<T>>);

/// All entries reachable for one host pattern, split by how their path is matched.
#[derive(Debug)]
struct Bucket<T> {
    /// Prefix → slots, best first.
    prefixes: SlotTable<T>,
    /// Distinct prefix lengths present, longest first.
    prefix_lens: Vec<usize>,
    /// Regexes indexed by the literals their matches begin with → slots, best first.
    regexes: SlotTable<T>,
    /// Distinct lengths of those literals, longest first.
    regex_lens: Vec<usize>,
    /// Other regex and path-less slots, best first.
    others: SlotList<T>,
}

impl<T> Default for Bucket<T> {
    fn default() -> Self {
        Bucket {
            prefixes: HashMap::default(),
            prefix_lens: Vec::new(),
            regexes: HashMap::default(),
            regex_lens: Vec::new(),
            others: Arc::default(),
        }
    }
}

impl<T> Clone for Bucket<T> {
    fn clone(&self) -> Self {
        Bucket {
            prefixes: self.prefixes.clone(),
            prefix_lens: self.prefix_lens.clone(),
            regexes: self.regexes.clone(),
            regex_lens: self.regex_lens.clone(),
            others: self.others.clone(),
        }
    }
}

/// A compiled, immutable router. Its buckets are shared between a router and the one
/// [`Router::edit`] makes of it, so changing a few routes of 10,000 copies only the buckets those
/// routes are in (a data plane applies a one-route delta without reassembling every route).
#[derive(Debug)]
pub struct Router<T> {
    /// Each route's entries (one per path) by its order key, for edits and scans.
    routes: HashMap<u128, Arc<[Arc<Entry<T>>]>, Hasher>,
    exact: BucketTable<T>,
    /// `*.example.com` → `.example.com`: looked up by each of the request host's suffixes that
    /// start at a dot (a host has few dots), so thousands of wildcard hosts cost a few probes.
    suffixes: BucketTable<T>,
    /// `example.*` → `example.`, looked up the same way by the host's prefixes ending at a dot.
    prefixes: BucketTable<T>,
    /// Wildcard patterns of another shape (none the Admin API accepts; a stored row may hold one),
    /// tried one by one: `(pattern, is a suffix)`.
    odd_wildcards: Vec<OddWildcard<T>>,
    any_host: Arc<Bucket<T>>,
}

impl<T> Clone for Router<T> {
    /// Shallow: buckets and entries are shared.
    fn clone(&self) -> Self {
        Router {
            routes: self.routes.clone(),
            exact: self.exact.clone(),
            suffixes: self.suffixes.clone(),
            prefixes: self.prefixes.clone(),
            odd_wildcards: self.odd_wildcards.clone(),
            any_host: self.any_host.clone(),
        }
    }
}

/// A route to place: its order key (smaller wins ties), compiled matcher and target.
pub type KeyedRoute<T> = (u128, Arc<RouteMatcher>, T);

impl<T: Clone> Router<T> {
    /// A router without routes.
    pub fn empty() -> Router<T> {
        Router {
            routes: HashMap::default(),
            exact: HashMap::default(),
            suffixes: HashMap::default(),
            prefixes: HashMap::default(),
            odd_wildcards: Vec::new(),
            any_host: Arc::default(),
        }
    }

    /// Compiles and assembles routes; among routes of equal priority the one given first wins.
    pub fn build(routes: Vec<RouteSpec<T>>) -> Result<Router<T>, RouteError> {
        let compiled = routes
            .into_iter()
            .map(|spec| Ok((Arc::new(RouteMatcher::compile(&spec)?), spec.target)))
            .collect::<Result<Vec<_>, RouteError>>()?;
        Ok(Router::assemble(compiled))
    }

    /// Assembles compiled routes (cannot fail); among routes of equal priority the one given first
    /// wins.
    pub fn assemble(routes: Vec<(Arc<RouteMatcher>, T)>) -> Router<T> {
        Router::assemble_keyed(routes.into_iter().enumerate().map(|(i, (m, t))| (i as u128, m, t)).collect())
    }

    /// Assembles compiled routes, each with its order key (keys are distinct).
    pub fn assemble_keyed(routes: Vec<KeyedRoute<T>>) -> Router<T> {
        let mut router = Router::empty();
        router.routes.reserve(routes.len());
        for (key, matcher, target) in routes {
            router.place(key, matcher, target, false);
        }
        let sort = |b: &mut Arc<Bucket<T>>| Arc::make_mut(b).finish();
        router.exact.values_mut().for_each(sort);
        router.suffixes.values_mut().for_each(sort);
        router.prefixes.values_mut().for_each(sort);
        router.odd_wildcards.iter_mut().for_each(|(_, _, b)| sort(b));
        sort(&mut router.any_host);
        router
    }

    /// This router with the routes of `remove` taken out and `add` placed (a key of `add` already
    /// present is replaced). Only the buckets those routes are in are copied; the rest is shared.
    pub fn edit(&self, remove: &[u128], add: Vec<KeyedRoute<T>>) -> Router<T> {
        let mut router = self.clone();
        for key in remove.iter().chain(add.iter().map(|(k, _, _)| k)) {
            router.take_out(*key);
        }
        for (key, matcher, target) in add {
            router.place(key, matcher, target, true);
        }
        // Buckets left without routes go (once per edit: a pass over every host).
        let empty = |b: &Arc<Bucket<T>>| b.is_empty();
        router.exact.retain(|_, b| !empty(b));
        router.suffixes.retain(|_, b| !empty(b));
        router.prefixes.retain(|_, b| !empty(b));
        router.odd_wildcards.retain(|(_, _, b)| !empty(b));
        router
    }

    /// The bucket of a host pattern, made unshared (created when missing).
    fn bucket_mut(&mut self, pattern: &HostPattern) -> &mut Bucket<T> {
        let shared = match pattern {
            HostPattern::Any => &mut self.any_host,
            HostPattern::Suffix(s) if s.starts_with('.') => table_bucket(&mut self.suffixes, s),
            HostPattern::Prefix(p) if p.ends_with('.') => table_bucket(&mut self.prefixes, p),
            HostPattern::Suffix(s) => odd_wildcard(&mut self.odd_wildcards, s, true),
            HostPattern::Prefix(p) => odd_wildcard(&mut self.odd_wildcards, p, false),
            HostPattern::Exact(h) => table_bucket(&mut self.exact, h),
        };
        Arc::make_mut(shared)
    }

    /// Places a route's entries in the bucket of each of its hosts: appended (sorted afterwards by
    /// [`Bucket::finish`]) or, with `sorted`, inserted at their place.
    fn place(&mut self, key: u128, matcher: Arc<RouteMatcher>, target: T, sorted: bool) {
        let entries: Arc<[Arc<Entry<T>>]> = matcher
            .paths
            .iter()
            .map(|(path, priority)| {
                Arc::new(Entry {
                    priority: *priority,
                    order: key,
                    path: path.clone(),
                    matcher: matcher.clone(),
                    target: target.clone(),
                })
            })
            .collect();
        for (pattern, port) in &matcher.hosts {
            let bucket = self.bucket_mut(pattern);
            for entry in entries.iter() {
                let slot = Slot { entry: entry.clone(), port: *port };
                match &entry.path {
                    PathMatch::Prefix(p) => bucket.insert(Table::Prefixes, p, slot, sorted),
                    PathMatch::Regex(_, Some(literals)) => {
                        for l in literals.iter() {
                            bucket.insert(Table::Regexes, l, slot.clone(), sorted);
                        }
                    }
                    _ => bucket.insert_other(slot, sorted),
                }
            }
        }
        self.routes.insert(key, entries);
    }

    /// Takes a route's entries out of every bucket they are in.
    fn take_out(&mut self, key: u128) {
        let Some(entries) = self.routes.remove(&key) else { return };
        let Some(first) = entries.first() else { return };
        let matcher = first.matcher.clone();
        for (pattern, _) in &matcher.hosts {
            let bucket = self.bucket_mut(pattern);
            for entry in entries.iter() {
                match &entry.path {
                    PathMatch::Prefix(p) => bucket.remove(Table::Prefixes, p, key),
                    PathMatch::Regex(_, Some(literals)) => {
                        for l in literals.iter() {
                            bucket.remove(Table::Regexes, l, key);
                        }
                    }
                    _ => Arc::make_mut(&mut bucket.others).retain(|s| s.entry.order != key),
                }
            }
        }
    }
}

impl<T> Router<T> {
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route's target (in no particular order).
    pub fn targets(&self) -> impl Iterator<Item = &T> {
        self.routes.values().filter_map(|entries| entries.first().map(|e| &e.target))
    }

    /// Finds the highest-priority route matching the request.
    pub fn find(&self, req: &RequestView<'_>) -> Option<Match<'_, T>> {
        let mut best: Option<(&Entry<T>, usize)> = None;
        if let Some(bucket) = self.exact.get(req.host) {
            search(bucket, req, &mut best);
        }
        if !self.suffixes.is_empty() || !self.prefixes.is_empty() {
            let host = req.host;
            for (i, _) in host.match_indices('.') {
                // `.example.com` of `a.example.com` (something before it), `a.` of `a.b` (something after).
                if i > 0
                    && let Some(bucket) = self.suffixes.get(&host[i..])
                {
                    search(bucket, req, &mut best);
                }
                if i + 1 < host.len()
                    && let Some(bucket) = self.prefixes.get(&host[..=i])
                {
                    search(bucket, req, &mut best);
                }
            }
        }
        for (pattern, suffix, bucket) in &self.odd_wildcards {
            let host = req.host;
            let fits = host.len() > pattern.len()
                && if *suffix { host.ends_with(&**pattern) } else { host.starts_with(&**pattern) };
            if fits {
                search(bucket, req, &mut best);
            }
        }
        search(&self.any_host, req, &mut best);
        best.map(answer)
    }

    /// [`Router::find`] without the index: every path of every route, under every host pattern.
    /// The oracle the index is checked against (router tests, `fuzz/`), never on the hot path.
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn find_by_scan(&self, req: &RequestView<'_>) -> Option<Match<'_, T>> {
        let mut best: Option<(&Entry<T>, usize)> = None;
        for entry in self.routes.values().flat_map(|e| e.iter()) {
            let host_matches = entry.matcher.hosts.iter().any(|(pattern, port)| {
                let host = req.host;
                port.is_none_or(|p| p == req.port)
                    && match pattern {
                        HostPattern::Any => true,
                        HostPattern::Exact(h) => **h == *host,
                        HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(&**s),
                        HostPattern::Prefix(p) => host.len() > p.len() && host.starts_with(&**p),
                    }
            });
            if !host_matches || best.is_some_and(|(b, _)| !beats(entry, b)) {
                continue;
            }
            if let Some(len) = entry.matches(req) {
                best = Some((entry, len));
            }
        }
        best.map(answer)
    }
}

impl<T> Router<T> {
    /// Every bucket's lists in their order, as text (tests compare an edited router with one
    /// assembled whole).
    #[cfg(test)]
    pub(crate) fn layout(&self) -> Vec<String> {
        let list = |slots: &[Slot<T>]| -> String {
            let shown: Vec<String> =
                slots.iter().map(|s| format!("{}:{:?}:{:?}", s.entry.order, s.port, s.entry.priority)).collect();
            shown.join(",")
        };
        let bucket = |name: String, b: &Bucket<T>| -> Vec<String> {
            let mut out: Vec<String> = b
                .prefixes
                .iter()
                .map(|(k, v)| format!("{name} prefix {k} = {}", list(v)))
                .chain(b.regexes.iter().map(|(k, v)| format!("{name} regex {k} = {}", list(v))))
                .collect();
            out.push(format!("{name} others = {}", list(&b.others)));
            out.push(format!("{name} lens = {:?} {:?}", b.prefix_lens, b.regex_lens));
            out
        };
        let mut out: Vec<String> = Vec::new();
        for (kind, map) in [("exact", &self.exact), ("suffix", &self.suffixes), ("prefix", &self.prefixes)] {
            for (k, b) in map {
                out.extend(bucket(format!("{kind} {k}"), b));
            }
        }
        for (k, suffix, b) in &self.odd_wildcards {
            out.extend(bucket(format!("odd {k} {suffix}"), b));
        }
        out.extend(bucket("any".into(), &self.any_host));
        let mut keys: Vec<u128> = self.routes.keys().copied().collect();
        keys.sort_unstable();
        out.push(format!("routes {keys:?}"));
        out.sort();
        out
    }
}

fn answer<T>((entry, matched_len): (&Entry<T>, usize)) -> Match<'_, T> {
    Match {
        target: &entry.target,
        matched_len,
        prefix: match &entry.path {
            PathMatch::Prefix(p) => Some(&**p),
            _ => None,
        },
        regex: match &entry.path {
            PathMatch::Regex(re, _) => Some(re),
            _ => None,
        },
    }
}

fn search<'s, T>(bucket: &'s Bucket<T>, req: &RequestView<'_>, best: &mut Option<(&'s Entry<T>, usize)>) {
    for (table, lens) in [(&bucket.prefixes, &bucket.prefix_lens), (&bucket.regexes, &bucket.regex_lens)] {
        for &len in lens {
            if len > req.path.len() || !req.path.is_char_boundary(len) {
                continue;
            }
            if let Some(slots) = table.get(&req.path[..len]) {
                scan(slots, req, best);
            }
        }
    }
    scan(&bucket.others, req, best);
}

/// Walks slots (best first) and keeps the best full match, stopping once nothing better can follow.
fn scan<'s, T>(slots: &'s [Slot<T>], req: &RequestView<'_>, best: &mut Option<(&'s Entry<T>, usize)>) {
    for slot in slots {
        let entry = &*slot.entry;
        if let Some((b, _)) = best
            && !beats(entry, b)
        {
            return;
        }
        if slot.port.is_some_and(|p| p != req.port) {
            continue;
        }
        if let Some(len) = entry.matches(req) {
            *best = Some((entry, len));
            return;
        }
    }
}

fn beats<T>(a: &Entry<T>, b: &Entry<T>) -> bool {
    a.priority > b.priority || (a.priority == b.priority && a.order < b.order)
}

/// Where a slot sorts in its list: best first.
fn rank<T>(s: &Slot<T>) -> (std::cmp::Reverse<Priority>, u128) {
    (std::cmp::Reverse(s.entry.priority), s.entry.order)
}

/// The keyed tables of a bucket.
#[derive(Clone, Copy)]
enum Table {
    Prefixes,
    Regexes,
}

impl<T> Bucket<T> {
    fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.regexes.is_empty() && self.others.is_empty()
    }

    fn table(&mut self, table: Table) -> (&mut SlotTable<T>, &mut Vec<usize>) {
        match table {
            Table::Prefixes => (&mut self.prefixes, &mut self.prefix_lens),
            Table::Regexes => (&mut self.regexes, &mut self.regex_lens),
        }
    }

    fn insert(&mut self, table: Table, key: &str, slot: Slot<T>, sorted: bool) {
        let (map, lens) = self.table(table);
        let shared: Arc<str> = map.get_key_value(key).map_or_else(|| key.into(), |(k, _)| k.clone());
        let slots = Arc::make_mut(map.entry(shared).or_default());
        if sorted {
            let at = slots.partition_point(|s| rank(s) <= rank(&slot));
            slots.insert(at, slot);
            // Lengths stay longest first, each once.
            if let Err(at) = lens.binary_search_by(|l| key.len().cmp(l)) {
                lens.insert(at, key.len());
            }
        } else {
            slots.push(slot);
        }
    }

    fn insert_other(&mut self, slot: Slot<T>, sorted: bool) {
        if sorted {
            let others = Arc::make_mut(&mut self.others);
            let at = others.partition_point(|s| rank(s) <= rank(&slot));
            others.insert(at, slot);
        } else {
            Arc::make_mut(&mut self.others).push(slot);
        }
    }

    fn remove(&mut self, table: Table, key: &str, order: u128) {
        let (map, lens) = self.table(table);
        let Some(slots) = map.get_mut(key) else { return };
        let slots = Arc::make_mut(slots);
        slots.retain(|s| s.entry.order != order);
        if slots.is_empty() {
            map.remove(key);
            if !map.keys().any(|k| k.len() == key.len()) {
                lens.retain(|l| *l != key.len());
            }
        }
    }

    /// Sorts every list best first and lists the key lengths present (after appending).
    fn finish(&mut self) {
        for slots in self.prefixes.values_mut().chain(self.regexes.values_mut()) {
            Arc::make_mut(slots).sort_by_key(rank);
        }
        Arc::make_mut(&mut self.others).sort_by_key(rank);
        let lens = |table: &SlotTable<T>| {
            let mut lens: Vec<usize> = table.keys().map(|k| k.len()).collect();
            lens.sort_unstable_by(|a, b| b.cmp(a));
            lens.dedup();
            lens
        };
        self.prefix_lens = lens(&self.prefixes);
        self.regex_lens = lens(&self.regexes);
    }
}

impl<T> Entry<T> {
    /// Checks everything but the host; returns the matched path length.
    fn matches(&self, req: &RequestView<'_>) -> Option<usize> {
        let route = &*self.matcher;
        if let Some(methods) = &route.methods
            && !methods.iter().any(|m| m == req.method)
        {
            return None;
        }
        if !route.snis.is_empty()
            && let Some(sni) = req.sni
            && !route.snis.iter().any(|s| **s == *sni)
        {
            return None;
        }
        for (name, matcher) in &route.headers {
            let ok = req.headers.get_all(name).iter().any(|v| {
                let Ok(v) = v.to_str() else { return false };
                match matcher {
                    HeaderValueMatch::Exact(values) => values.iter().any(|x| x.eq_ignore_ascii_case(v)),
                    HeaderValueMatch::Regex(re) => re.is_match(v),
                }
            });
            if !ok {
                return None;
            }
        }
        match &self.path {
            PathMatch::Any => Some(0),
            PathMatch::Prefix(p) => req.path.starts_with(&**p).then_some(p.len()),
            PathMatch::Regex(re, _) => re.find(req.path).map(|m| m.end()),
        }
    }
}

/// The bucket of `key` in a table (created when missing).
fn table_bucket<'a, T>(table: &'a mut BucketTable<T>, key: &str) -> &'a mut Arc<Bucket<T>> {
    // A key already there is shared, not allocated again.
    let key: Arc<str> = table.get_key_value(key).map_or_else(|| key.into(), |(k, _)| k.clone());
    table.entry(key).or_default()
}

fn odd_wildcard<'a, T>(list: &'a mut Vec<OddWildcard<T>>, key: &str, suffix: bool) -> &'a mut Arc<Bucket<T>> {
    let pos = match list.iter().position(|(k, s, _)| &**k == key && *s == suffix) {
        Some(p) => p,
        None => {
            list.push((key.into(), suffix, Arc::default()));
            list.len() - 1
        }
    };
    &mut list[pos].2
}

#[cfg(test)]
mod tests;
