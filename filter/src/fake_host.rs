//! A fake host for the stream's unit tests: header maps a test fills, a clock it sets, and a
//! record of every call the stream made, metric updates by metric name.

use proxy_wasm::types::MetricType;

use cohort_core::header_pairs::serialize;

use crate::stream_host::Host;

/// A header map as the host keeps it: raw bytes, in order, repeated names allowed.
pub type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// The fake host. Header names are compared ASCII case-insensitively, as Envoy does.
#[derive(Debug, Default)]
pub struct FakeHost {
    /// The request's headers, as the stream's writes leave them.
    pub request: Headers,
    /// When set, what the host hands over for the request's headers instead of `request`
    /// serialized: hostile bytes the stream must survive.
    pub raw_request: Option<Vec<u8>>,
    /// The response's headers, as the stream's writes leave them.
    pub response: Headers,
    /// The host refuses to replace request headers.
    pub refuse_replace: bool,
    /// What the clock reads.
    pub now_nanos: u64,
    /// Every call the stream made, in order: `request headers`, `replace NAME: VALUE`,
    /// `remove NAME`, `response header NAME`, `add NAME: VALUE`, `clock`,
    /// `increment METRIC by N`.
    pub calls: Vec<String>,
    /// Metric names by id, as [`FakeHost::define`] handed the ids out.
    names: Vec<String>,
}

impl FakeHost {
    /// A host whose request carries `headers`.
    pub fn with_request(headers: &[(&[u8], &[u8])]) -> Self {
        FakeHost {
            request: headers
                .iter()
                .map(|(name, value)| (name.to_vec(), value.to_vec()))
                .collect(),
            ..FakeHost::default()
        }
    }

    /// Defines a metric as Envoy does: a fresh id for every call.
    pub fn define(&mut self, _kind: MetricType, name: &str) -> Option<u32> {
        self.names.push(name.to_owned());
        u32::try_from(self.names.len() - 1).ok()
    }

    /// The sum of the increments of every metric named `name`.
    pub fn counter(&self, name: &str) -> u64 {
        self.metric_updates("increment", name).sum()
    }

    /// The values of the increments of metrics named `name`.
    fn metric_updates<'a>(
        &'a self,
        verb: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = u64> + 'a {
        self.calls.iter().filter_map(move |call| {
            let rest = call.strip_prefix(verb)?.strip_prefix(' ')?;
            let (metric, value) = rest.split_once(" by ")?;
            (metric == name).then(|| value.parse().ok()).flatten()
        })
    }

    /// The request header `name`'s values, in order.
    pub fn request_header(&self, name: &str) -> Vec<&[u8]> {
        values(&self.request, name)
    }

    /// The response header `name`'s values, in order.
    pub fn response_header_values(&self, name: &str) -> Vec<&[u8]> {
        values(&self.response, name)
    }

    /// Whether the stream made a call starting with `prefix`.
    pub fn called(&self, prefix: &str) -> bool {
        self.calls.iter().any(|call| call.starts_with(prefix))
    }

    fn note(&mut self, call: String) {
        self.calls.push(call);
    }

    /// The name of metric `id`; ids the fake never handed out keep their number.
    fn metric_name(&self, id: u32) -> String {
        self.names
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
}

fn values<'a>(headers: &'a Headers, name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(candidate, _)| candidate.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, value)| value.as_slice())
        .collect()
}

fn serialized(headers: &Headers) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(name, value)| (name.as_slice(), value.as_slice()))
        .collect();
    serialize(&pairs)
}

fn remove(headers: &mut Headers, name: &str) {
    headers.retain(|(candidate, _)| !candidate.eq_ignore_ascii_case(name.as_bytes()));
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Host for FakeHost {
    fn request_headers(&mut self) -> Vec<u8> {
        self.note("request headers".to_owned());
        match &self.raw_request {
            Some(raw) => raw.clone(),
            None => serialized(&self.request),
        }
    }

    fn replace_request_header(&mut self, name: &str, value: &[u8]) -> bool {
        self.note(format!("replace {name}: {}", text(value)));
        if self.refuse_replace {
            return false;
        }
        remove(&mut self.request, name);
        self.request
            .push((name.as_bytes().to_vec(), value.to_vec()));
        true
    }

    fn remove_request_header(&mut self, name: &str) {
        self.note(format!("remove {name}"));
        remove(&mut self.request, name);
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.note(format!("response header {name}"));
        values(&self.response, name)
            .first()
            .map(|value| value.to_vec())
    }

    fn add_response_header(&mut self, name: &str, value: &[u8]) {
        self.note(format!("add {name}: {}", text(value)));
        self.response
            .push((name.as_bytes().to_vec(), value.to_vec()));
    }

    fn now_nanos(&mut self) -> u64 {
        self.note("clock".to_owned());
        self.now_nanos
    }

    /// Like the real host: nothing for an undefined metric or an increment Envoy would reject.
    fn increment(&mut self, metric: Option<u32>, by: u64) {
        if let (Some(id), 1..=0x7fff_ffff_ffff_ffff) = (metric, by) {
            let name = self.metric_name(id);
            self.note(format!("increment {name} by {by}"));
        }
    }
}
