//! The `redis` policy: counters in Redis, shared by every node using the same server. One request is
//! one round trip: a Lua script reads the windows, decides and counts atomically (so two nodes never
//! both let the 101st request of a 100 limit through), and sets each key to expire with its window.
//! Connections are per proxy worker thread (no cross-thread hop per request) and reconnect on
//! their own, so a Redis that comes back is used again without a restart.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::schema::RedisConfig;
use super::synced::{Increment, RemoteStore};
use super::windows::{Decision, MAX_WINDOWS, WindowNow};

/// The `redis` record of a plugin's config, as a connection target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: i64,
    pub timeout: Duration,
    pub ssl: bool,
    pub ssl_verify: bool,
}

impl RedisTarget {
    /// The connection a plugin's `redis` record describes; `None` without a host.
    pub fn from_config(redis: &RedisConfig) -> Option<RedisTarget> {
        Some(RedisTarget {
            host: redis.host.clone()?,
            port: redis.port.unwrap_or(6379),
            username: redis.username.clone(),
            password: redis.password.clone(),
            database: redis.database.unwrap_or(0),
            timeout: Duration::from_millis(redis.timeout.unwrap_or(2000)),
            ssl: redis.ssl,
            ssl_verify: redis.ssl_verify,
        })
    }

    fn connect(&self) -> Result<ConnectionManager, redis::RedisError> {
        let addr = if self.ssl {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: !self.ssl_verify,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut settings = RedisConnectionInfo::default().set_db(self.database);
        if let Some(u) = &self.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        let info = addr.into_connection_info()?.set_redis_settings(settings);
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_lazy_with_config(client, config)
    }

    /// This thread's connection to the target (created on first use, reconnecting by itself).
    fn connection(&self) -> Result<ConnectionManager, String> {
        thread_local! {
            static CONNECTIONS: RefCell<HashMap<RedisTarget, ConnectionManager>> = RefCell::new(HashMap::new());
        }
        CONNECTIONS.with(|c| {
            let mut c = c.borrow_mut();
            if let Some(m) = c.get(self) {
                return Ok(m.clone());
            }
            let m = self.connect().map_err(|e| e.to_string())?;
            c.insert(self.clone(), m.clone());
            Ok(m)
        })
    }

    /// Decides and counts one request in one round trip. `keys[i]` are window i's current and
    /// previous counter keys.
    pub async fn hit(
        &self,
        keys: &[(String, String)],
        windows: &[WindowNow],
        penalty: bool,
    ) -> Result<Decision, String> {
        let mut conn = self.connection()?;
        let mut invocation = script().prepare_invoke();
        invocation.arg(windows.len()).arg(u8::from(penalty));
        for ((cur, prev), w) in keys.iter().zip(windows) {
            invocation.key(cur).key(prev);
            invocation.arg(w.limit).arg(w.prev_weight).arg(w.ttl());
        }
        let reply: Vec<String> = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| format!("timeout after {} ms", self.timeout.as_millis()))?
            .map_err(|e| e.to_string())?;
        let mut usage = [0.0; MAX_WINDOWS];
        for (i, u) in reply.iter().take(windows.len().min(MAX_WINDOWS)).enumerate() {
            usage[i] = u.parse().unwrap_or(0.0);
        }
        let allowed = reply.get(windows.len()).is_some_and(|a| a == "1");
        Ok(Decision { allowed, usage })
    }

    /// Logs a Redis failure at most once per 10 seconds per target, so an outage does not flood
    /// the log.
    pub fn log_failure(&self, error: &str) {
        static LAST: OnceLock<Mutex<HashMap<RedisTarget, Instant>>> = OnceLock::new();
        let mut last = LAST.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last.get(self).is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(10)) {
            last.insert(self.clone(), now);
            tracing::error!(host = %self.host, port = self.port, error, "rate-limiting: Redis unavailable");
        }
    }
}

/// KEYS: (current, previous) per window. ARGV: window count, penalty, then per window: limit,
/// weight of the previous window, ttl. Returns each window's usage before this request (as strings:
/// Redis truncates Lua numbers) and `1` or `0` for allowed.
const SCRIPT: &str = r#"
local n = tonumber(ARGV[1])
local penalty = ARGV[2] == "1"
local out = {}
local allowed = true
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local used = tonumber(redis.call("GET", KEYS[2 * i - 1]) or "0")
  local weight = tonumber(ARGV[base + 2])
  if weight > 0 then
    used = used + tonumber(redis.call("GET", KEYS[2 * i]) or "0") * weight
  end
  out[i] = tostring(used)
  if used + 1 > tonumber(ARGV[base + 1]) then
    allowed = false
  end
end
if allowed or penalty then
  for i = 1, n do
    local ttl = tonumber(ARGV[2 + (i - 1) * 3 + 3])
    if redis.call("INCR", KEYS[2 * i - 1]) == 1 then
      redis.call("EXPIRE", KEYS[2 * i - 1], ttl)
    end
  end
end
out[n + 1] = allowed and "1" or "0"
return out
"#;

fn script() -> &'static redis::Script {
    static SCRIPT_CELL: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT_CELL.get_or_init(|| redis::Script::new(SCRIPT))
}

/// Redis as the remote store of batched counters (`sync_rate` > 0): one pipeline per flush.
#[derive(Debug)]
pub struct RedisTotals {
    pub target: RedisTarget,
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

impl RedisTotals {
    pub fn new(target: RedisTarget) -> RedisTotals {
        RedisTotals { target, conn: tokio::sync::OnceCell::new() }
    }
}

impl RemoteStore for RedisTotals {
    fn add<'a>(
        &'a self,
        batch: &'a [Increment],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u64>, String>> + Send + 'a>> {
        Box::pin(async move {
            let conn =
                self.conn.get_or_try_init(|| async { self.target.connect() }).await.map_err(|e| e.to_string())?;
            let mut conn = conn.clone();
            let mut pipe = redis::pipe();
            for (key, n, ttl) in batch {
                pipe.cmd("INCRBY").arg(key).arg(*n).cmd("EXPIRE").arg(key).arg(*ttl).ignore();
            }
            tokio::time::timeout(self.target.timeout, pipe.query_async::<Vec<u64>>(&mut conn))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())
        })
    }
}
