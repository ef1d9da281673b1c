//! A real RabbitMQ broker (Debian's `rabbitmq-server`) for one test: its own node name, port, data and
//! log directories under a temp dir, killed with its process group when dropped. A real client (Python
//! pika, Debian's `python3-pika`) sends and reads messages through `tests/bus/amqp.py`.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct RabbitMq {
    pub port: u16,
    child: Child,
    pub dir: PathBuf,
}

/// The Python with Debian's pika (the test script installs python3-pika).
const PYTHON: &str = "/usr/bin/python3";

impl RabbitMq {
    /// Starts a broker in `dir` and waits until it takes connections (up to a minute).
    pub fn start(dir: &Path) -> RabbitMq {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let port = crate::free_tcp_addr().port();
        let dist = crate::free_tcp_addr().port();
        let log = std::fs::File::create(dir.join("rabbitmq.log")).unwrap();
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .current_dir(dir)
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", format!("polarizer-{port}@localhost"))
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server (Debian's rabbitmq-server package; scripts/test installs it)");
        let broker = RabbitMq {
            port,
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ did not listen within a minute: {}",
                std::fs::read_to_string(dir.join("rabbitmq.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.port)
    }

    /// Runs `tests/bus/amqp.py` with these arguments against this broker.
    pub fn client(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bus/amqp.py");
        let output = Command::new(PYTHON)
            .arg(script)
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("python3 with pika");
        assert!(
            output.status.success(),
            "amqp.py {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Publishes `body` to amq.topic with this routing key and message id.
    pub fn publish(&self, topic: &str, message_id: &str, body: &str) {
        self.client(&["publish", topic, message_id, body]);
    }

    /// Every message waiting in `queue`, taken: (routing key, message id, body).
    pub fn drain(&self, queue: &str) -> Vec<(String, String, serde_json::Value)> {
        let output = self.client(&["drain", queue]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                let body = serde_json::from_str(value["body"].as_str().unwrap_or_default())
                    .unwrap_or(serde_json::Value::Null);
                (
                    value["topic"].as_str().unwrap_or_default().to_string(),
                    value["message_id"].as_str().unwrap_or_default().to_string(),
                    body,
                )
            })
            .collect()
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        // The server script starts erl in its group: end them all.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
