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
    /// The TLS listener's port (started by [`RabbitMq::start_tls`] only).
    pub tls_port: u16,
    dist: u16,
    child: Child,
    pub dir: PathBuf,
}

/// The Python with Debian's pika (the test script installs python3-pika).
const PYTHON: &str = "/usr/bin/python3";

impl RabbitMq {
    /// Starts a broker in `dir` and waits until it takes connections (up to a minute).
    pub fn start(dir: &Path) -> RabbitMq {
        Self::start_with(dir, &[])
    }

    /// [`RabbitMq::start`] with these plugins on (`rabbitmq_amqp1_0` serves AMQP 1.0 on the same port).
    pub fn start_with(dir: &Path, plugins: &[&str]) -> RabbitMq {
        Self::launch(dir, plugins, None)
    }

    /// [`RabbitMq::start`] with a TLS listener too (`tls_port`): this CA, server certificate and key,
    /// and a client certificate signed by the CA required of every TLS client.
    pub fn start_tls(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> RabbitMq {
        Self::launch(dir, &[], Some((ca, cert, key)))
    }

    fn launch(dir: &Path, plugins: &[&str], tls: Option<(&Path, &Path, &Path)>) -> RabbitMq {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )
        .unwrap();
        let port = crate::free_tcp_addr().port();
        let dist = crate::free_tcp_addr().port();
        let tls_port = crate::free_tcp_addr().port();
        if let Some((ca, cert, key)) = tls {
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!(
                    "listeners.ssl.default = {tls_port}\n\
                     ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                     ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
            )
            .unwrap();
        }
        let child = Self::spawn(dir, port, dist);
        let broker = RabbitMq {
            port,
            dist,
            tls_port,
            child,
            dir: dir.to_path_buf(),
        };
        broker.wait_listening();
        if tls.is_some() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "RabbitMQ's TLS listener did not open"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        broker
    }

    /// Kills the broker at once (as a crash would), keeping its data.
    pub fn kill(&mut self) {
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port with the same data (durable queues and persistent
    /// messages survive).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.dir, self.port, self.dist);
        self.wait_listening();
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ did not listen within a minute: {}",
                std::fs::read_to_string(self.dir.join("rabbitmq.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(dir: &Path, port: u16, dist: u16) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("rabbitmq.log"))
            .unwrap();
        Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
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
            .expect("rabbitmq-server (Debian's rabbitmq-server package; scripts/test installs it)")
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2F", self.port)
    }

    /// Runs `tests/bus/amqp.py` with these arguments against this broker.
    pub fn client(&self, args: &[&str]) -> Output {
        self.script("amqp.py", args)
    }

    /// Runs `tests/bus/amqp1.py` (Qpid Proton, AMQP 1.0) with these arguments against this broker.
    pub fn client1(&self, args: &[&str]) -> Output {
        self.script("amqp1.py", args)
    }

    fn script(&self, name: &str, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bus").join(name);
        let output = Command::new(PYTHON)
            .arg(script)
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("Debian's python3 (with python3-pika and python3-qpid-proton)");
        assert!(
            output.status.success(),
            "{name} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Every message waiting at an AMQP 1.0 address, taken: (subject, message id, body).
    pub fn drain1(&self, address: &str) -> Vec<(String, String, serde_json::Value)> {
        lines(&self.client1(&["drain", address]))
    }

    /// Publishes `body` to amq.topic with this routing key and message id.
    pub fn publish(&self, topic: &str, message_id: &str, body: &str) {
        self.client(&["publish", topic, message_id, body]);
    }

    /// Every message waiting in `queue`, taken: (routing key, message id, body).
    pub fn drain(&self, queue: &str) -> Vec<(String, String, serde_json::Value)> {
        lines(&self.client(&["drain", queue]))
    }
}

/// The clients' JSON lines as (topic, message id, body parsed).
fn lines(output: &Output) -> Vec<(String, String, serde_json::Value)> {
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

impl Drop for RabbitMq {
    fn drop(&mut self) {
        // The server script starts erl in its group: end them all.
        self.kill();
    }
}
