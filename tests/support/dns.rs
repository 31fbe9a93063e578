//! A DNS server for tests: answers A, AAAA and SRV questions over UDP on a free port of 127.0.0.1
//! from a table the test sets, in a thread of its own (it outlives any one test's runtime), and
//! counts the questions per name. Names not in the table do not exist (NXDOMAIN). Every gateway the
//! harness starts asks the process's shared one unless a test gives it its own, so that no test
//! depends on the machine's name servers.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// What one answer to a name holds: addresses, SRV records, or a server failure.
#[derive(Debug, Clone)]
pub enum Answer {
    Addresses(Vec<IpAddr>),
    /// `(priority, weight, port, target)`.
    Srv(Vec<(u16, u16, u16, String)>),
    ServFail,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Answered in turn, one per question.
    answers: Vec<Answer>,
    ttl: u32,
}

#[derive(Debug, Default)]
struct State {
    zone: HashMap<String, Entry>,
    asked: HashMap<String, usize>,
}

/// The running server; its thread ends with the process.
#[derive(Clone)]
pub struct TestDns {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl TestDns {
    pub fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind DNS");
        let addr = socket.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if let Some(reply) = answer(&shared, &buf[..n]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        TestDns { addr, state }
    }

    /// The process's shared server (what gateways ask by default).
    pub fn shared() -> &'static TestDns {
        static SHARED: OnceLock<TestDns> = OnceLock::new();
        SHARED.get_or_init(TestDns::start)
    }

    /// `name` has these addresses, with `ttl`.
    pub fn set_addresses(&self, name: &str, ips: &[&str], ttl: u32) {
        let ips = ips.iter().map(|ip| ip.parse().expect("ip")).collect();
        self.set(name, vec![Answer::Addresses(ips)], ttl);
    }

    /// `name` answers each question with the next of `answers`, in turn.
    pub fn set(&self, name: &str, answers: Vec<Answer>, ttl: u32) {
        let mut state = self.state.lock().expect("dns state");
        state.zone.insert(name.to_ascii_lowercase(), Entry { answers, ttl });
    }

    /// Questions asked about `name` so far.
    pub fn asked(&self, name: &str) -> usize {
        self.state.lock().expect("dns state").asked.get(&name.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// Waits until `name` has been asked about `n` more times than `before`.
    pub async fn wait_asked(&self, name: &str, before: usize, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.asked(name) < before + n {
            assert!(
                Instant::now() < deadline,
                "{name} was asked {} times, waiting for {}",
                self.asked(name),
                before + n
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The reply to one question.
fn answer(state: &Mutex<State>, query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let name = question.name().to_utf8().trim_end_matches('.').to_ascii_lowercase();
    let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(question.clone());
    let chosen = {
        let mut state = state.lock().ok()?;
        let asked = state.asked.entry(name.clone()).or_default();
        let turn = *asked;
        *asked += 1;
        state.zone.get(&name).map(|e| (e.answers.get(turn % e.answers.len().max(1)).cloned(), e.ttl))
    };
    let owner = question.name().clone();
    match chosen {
        None => reply.metadata.response_code = ResponseCode::NXDomain,
        Some((None, _)) => {}
        Some((Some(Answer::ServFail), _)) => reply.metadata.response_code = ResponseCode::ServFail,
        Some((Some(Answer::Addresses(ips)), ttl)) => {
            for ip in ips {
                let data = match (ip, question.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(owner.clone(), ttl, data));
            }
        }
        Some((Some(Answer::Srv(records)), ttl)) => {
            if question.query_type() == RecordType::SRV {
                for (priority, weight, port, target) in records {
                    let target = Name::from_ascii(format!("{target}.")).ok()?;
                    reply.add_answer(Record::from_rdata(
                        owner.clone(),
                        ttl,
                        RData::SRV(SRV::new(priority, weight, port, target)),
                    ));
                }
            }
        }
    }
    reply.to_vec().ok()
}
