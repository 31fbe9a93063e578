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

/// One (route, path) pair: where a request's path is checked, with that path's priority.
#[derive(Debug)]
struct Entry {
    route: usize,
    priority: Priority,
    /// Creation order, for ties.
    order: usize,
    path: PathMatch,
}

/// An entry placed in a host bucket, with the port its host entry demanded.
#[derive(Debug, Clone, Copy)]
struct Slot {
    entry: u32,
    port: Option<u16>,
}

/// All entries reachable for one host pattern, split by how their path is matched.
#[derive(Debug, Default)]
struct Bucket {
    /// Prefix → slots, best first.
    prefixes: HashMap<Box<str>, Vec<Slot>, Hasher>,
    /// Distinct prefix lengths present, longest first.
    prefix_lens: Vec<usize>,
    /// Regexes indexed by the literals their matches begin with → slots, best first.
    regexes: HashMap<Box<str>, Vec<Slot>, Hasher>,
    /// Distinct lengths of those literals, longest first.
    regex_lens: Vec<usize>,
    /// Other regex and path-less slots, best first.
    others: Vec<Slot>,
}

/// A compiled, immutable router.
#[derive(Debug)]
pub struct Router<T> {
    targets: Vec<T>,
    matchers: Vec<Arc<RouteMatcher>>,
    entries: Vec<Entry>,
    exact: HashMap<Box<str>, Bucket, Hasher>,
    /// `*.example.com` → `.example.com`: looked up by each of the request host's suffixes that
    /// start at a dot (a host has few dots), so thousands of wildcard hosts cost a few probes.
    suffixes: HashMap<Box<str>, Bucket, Hasher>,
    /// `example.*` → `example.`, looked up the same way by the host's prefixes ending at a dot.
    prefixes: HashMap<Box<str>, Bucket, Hasher>,
    /// Wildcard patterns of another shape (none the Admin API accepts; a stored row may hold one),
    /// tried one by one: `(pattern, is a suffix)`.
    odd_wildcards: Vec<(Box<str>, bool, Bucket)>,
    any_host: Bucket,
}

impl<T> Router<T> {
    /// A router without routes.
    pub fn empty() -> Router<T> {
        Router {
            targets: Vec::new(),
            matchers: Vec::new(),
            entries: Vec::new(),
            exact: HashMap::default(),
            suffixes: HashMap::default(),
            prefixes: HashMap::default(),
            odd_wildcards: Vec::new(),
            any_host: Bucket::default(),
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
        let mut router = Router::empty();
        router.targets.reserve(routes.len());
        router.matchers.reserve(routes.len());
        for (index, (matcher, target)) in routes.into_iter().enumerate() {
            router.add(index, &matcher);
            router.matchers.push(matcher);
            router.targets.push(target);
        }
        let entries = &router.entries;
        let sort = |b: &mut Bucket| b.finish(entries);
        router.exact.values_mut().for_each(sort);
        router.suffixes.values_mut().for_each(sort);
        router.prefixes.values_mut().for_each(sort);
        router.odd_wildcards.iter_mut().for_each(|(_, _, b)| sort(b));
        sort(&mut router.any_host);
        router
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Every route's target, in the order given.
    pub fn targets(&self) -> &[T] {
        &self.targets
    }

    fn add(&mut self, index: usize, matcher: &RouteMatcher) {
        let first = self.entries.len();
        for (path, priority) in &matcher.paths {
            self.entries.push(Entry { route: index, priority: *priority, order: index, path: path.clone() });
        }
        let ids = first..self.entries.len();
        for (pattern, port) in &matcher.hosts {
            let bucket = match pattern {
                HostPattern::Any => &mut self.any_host,
                HostPattern::Suffix(s) if s.starts_with('.') => self.suffixes.entry(s.clone()).or_default(),
                HostPattern::Prefix(p) if p.ends_with('.') => self.prefixes.entry(p.clone()).or_default(),
                HostPattern::Suffix(s) => odd_wildcard(&mut self.odd_wildcards, s, true),
                HostPattern::Prefix(p) => odd_wildcard(&mut self.odd_wildcards, p, false),
                HostPattern::Exact(h) => self.exact.entry(h.clone()).or_default(),
            };
            for id in ids.clone() {
                let slot = Slot { entry: u32::try_from(id).unwrap_or(u32::MAX), port: *port };
                match &self.entries[id].path {
                    PathMatch::Prefix(p) => bucket.prefixes.entry(p.clone()).or_default().push(slot),
                    PathMatch::Regex(_, Some(literals)) => {
                        for l in literals.iter() {
                            bucket.regexes.entry(l.clone()).or_default().push(slot);
                        }
                    }
                    _ => bucket.others.push(slot),
                }
            }
        }
    }

    /// Finds the highest-priority route matching the request.
    pub fn find(&self, req: &RequestView<'_>) -> Option<Match<'_, T>> {
        let mut best: Option<(&Entry, usize)> = None;
        if let Some(bucket) = self.exact.get(req.host) {
            self.search(bucket, req, &mut best);
        }
        if !self.suffixes.is_empty() || !self.prefixes.is_empty() {
            let host = req.host;
            for (i, _) in host.match_indices('.') {
                // `.example.com` of `a.example.com` (something before it), `a.` of `a.b` (something after).
                if i > 0
                    && let Some(bucket) = self.suffixes.get(&host[i..])
                {
                    self.search(bucket, req, &mut best);
                }
                if i + 1 < host.len()
                    && let Some(bucket) = self.prefixes.get(&host[..=i])
                {
                    self.search(bucket, req, &mut best);
                }
            }
        }
        for (pattern, suffix, bucket) in &self.odd_wildcards {
            let host = req.host;
            let fits = host.len() > pattern.len()
                && if *suffix { host.ends_with(&**pattern) } else { host.starts_with(&**pattern) };
            if fits {
                self.search(bucket, req, &mut best);
            }
        }
        self.search(&self.any_host, req, &mut best);
        best.map(|best| self.answer(best))
    }

    /// [`Router::find`] without the index: every path of every route, under every host pattern.
    /// The oracle the index is checked against (router tests, `fuzz/`), never on the hot path.
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn find_by_scan(&self, req: &RequestView<'_>) -> Option<Match<'_, T>> {
        let mut best: Option<(&Entry, usize)> = None;
        for entry in &self.entries {
            let route = &self.matchers[entry.route];
            let host_matches = route.hosts.iter().any(|(pattern, port)| {
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
            if let Some(len) = entry.matches(route, req) {
                best = Some((entry, len));
            }
        }
        best.map(|best| self.answer(best))
    }

    fn answer<'s>(&'s self, (entry, matched_len): (&'s Entry, usize)) -> Match<'s, T> {
        Match {
            target: &self.targets[entry.route],
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

    fn search<'s>(&'s self, bucket: &'s Bucket, req: &RequestView<'_>, best: &mut Option<(&'s Entry, usize)>) {
        for (table, lens) in [(&bucket.prefixes, &bucket.prefix_lens), (&bucket.regexes, &bucket.regex_lens)] {
            for &len in lens {
                if len > req.path.len() || !req.path.is_char_boundary(len) {
                    continue;
                }
                if let Some(slots) = table.get(&req.path[..len]) {
                    self.scan(slots, req, best);
                }
            }
        }
        self.scan(&bucket.others, req, best);
    }

    /// Walks slots (best first) and keeps the best full match, stopping once nothing better can follow.
    fn scan<'s>(&'s self, slots: &[Slot], req: &RequestView<'_>, best: &mut Option<(&'s Entry, usize)>) {
        for slot in slots {
            let entry = &self.entries[slot.entry as usize];
            if let Some((b, _)) = best
                && !beats(entry, b)
            {
                return;
            }
            if slot.port.is_some_and(|p| p != req.port) {
                continue;
            }
            if let Some(len) = entry.matches(&self.matchers[entry.route], req) {
                *best = Some((entry, len));
                return;
            }
        }
    }
}

fn beats(a: &Entry, b: &Entry) -> bool {
    a.priority > b.priority || (a.priority == b.priority && a.order < b.order)
}

impl Bucket {
    fn finish(&mut self, entries: &[Entry]) {
        let key = |s: &Slot| {
            let e = &entries[s.entry as usize];
            (std::cmp::Reverse(e.priority), e.order)
        };
        for slots in self.prefixes.values_mut().chain(self.regexes.values_mut()) {
            slots.sort_by_key(key);
        }
        self.others.sort_by_key(key);
        let lens = |table: &HashMap<Box<str>, Vec<Slot>, Hasher>| {
            let mut lens: Vec<usize> = table.keys().map(|k| k.len()).collect();
            lens.sort_unstable_by(|a, b| b.cmp(a));
            lens.dedup();
            lens
        };
        self.prefix_lens = lens(&self.prefixes);
        self.regex_lens = lens(&self.regexes);
    }
}

impl Entry {
    /// Checks everything but the host; returns the matched path length.
    fn matches(&self, route: &RouteMatcher, req: &RequestView<'_>) -> Option<usize> {
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

fn odd_wildcard<'a>(list: &'a mut Vec<(Box<str>, bool, Bucket)>, key: &str, suffix: bool) -> &'a mut Bucket {
    let pos = match list.iter().position(|(k, s, _)| &**k == key && *s == suffix) {
        Some(p) => p,
        None => {
            list.push((key.into(), suffix, Bucket::default()));
            list.len() - 1
        }
    };
    &mut list[pos].2
}

#[cfg(test)]
mod tests;
