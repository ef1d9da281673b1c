#!/usr/bin/env bash
# Applies the playbook to this machine for real (as root), checks it is idempotent, that the installed
# units and configs verify, and that the installed binaries start and the agent joins the coordinator
# with an enrollment token of its own (not the shared one), spent by its enrollment.
# Where systemd is not PID 1 the service start steps are skipped (and reported so); this script then
# starts the installed binaries itself, with the installed configs, as systemd would.
#
# Usage: ansible/test.sh BINARY_DIR   (the directory holding built polarizer and polarizer-agent)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
binary_dir=$(cd "${1:?usage: ansible/test.sh BINARY_DIR}" && pwd)
venv="${POLARIZER_ANSIBLE_VENV:-$here/../target/ansible-venv}"

# Needs no root: secrets stay out of logs and diffs, the units keep their limits.
echo "ansible test: policy (secrets, unit limits)"
if python3 -c "import yaml" 2>/dev/null; then
  python3 "$here/policy_check.py"
else
  echo "ansible test: policy skipped here (python3 has no yaml module); it runs in the venv as root"
fi

if [ "$(id -u)" != 0 ]; then
  echo "ansible test: skipped (it installs into /usr/local/bin and /etc: run as root)"
  exit 0
fi
if [ ! -x "$venv/bin/ansible-playbook" ] || [ ! -x "$venv/bin/ansible-lint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "ansible-core>=2.17,<2.20" "ansible-lint>=25"
fi
export PATH="$venv/bin:$PATH" ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
cd "$here"

# The first apply must be a first one: an agent enrolled by an earlier run would never present the
# token the role gives it, and the coordinator's inventory would hold its name already.
echo "ansible test: removing what an earlier run installed (coordinator data, agent state, its token)"
rm -rf /var/lib/polarizer /var/lib/polarizer-agent /etc/polarizer/agent-token "$here/fetched"

"$venv/bin/python" "$here/policy_check.py" >/dev/null
echo "ansible test: ansible-lint"
ansible-lint --nocolor -q

extra=(-i inventory/local.yml
       -e "polarizer_coordinator_binary_src=$binary_dir/polarizer"
       -e "polarizer_agent_binary_src=$binary_dir/polarizer-agent")
echo "ansible test: first apply"
ansible-playbook "${extra[@]}" site.yml > "$here/../target/ansible-first.log" || { cat "$here/../target/ansible-first.log"; exit 1; }
grep -A3 "PLAY RECAP" "$here/../target/ansible-first.log"
if [ "$(ps -p 1 -o comm=)" != systemd ]; then
  grep -q "skipping: \[localhost\]" "$here/../target/ansible-first.log" || { echo "service steps were not skipped without systemd"; exit 1; }
  echo "ansible test: systemd is not PID 1 here: service start steps were skipped, as they should be"
fi

echo "ansible test: second apply must change nothing"
ansible-playbook "${extra[@]}" site.yml > "$here/../target/ansible-second.log"
recap=$(grep -A3 "PLAY RECAP" "$here/../target/ansible-second.log")
echo "$recap"
if ! echo "$recap" | grep -q "changed=0"; then
  grep -B2 "^changed" "$here/../target/ansible-second.log" || true
  echo "ansible test: the second apply changed something (not idempotent)"
  exit 1
fi

echo "ansible test: installed units and configs verify"
systemd-analyze verify /etc/systemd/system/polarizer.service /etc/systemd/system/polarizer-agent.service
/usr/local/bin/polarizer serve --check-config --config /etc/polarizer/coordinator.toml
/usr/local/bin/polarizer-agent --check-config --config /etc/polarizer/agent.toml
for secret in /etc/polarizer/agent-token /etc/polarizer/ca.pem /var/lib/polarizer/operator-token; do
  [ "$(stat -c %a "$secret")" = 600 ] || { echo "$secret is not mode 0600"; exit 1; }
done

# The per-host token row of the agent's token: its name and "spent" or "unspent" ("none" when there is
# none). The coordinator stores only the digest of a per-host token, with the one name it enrolls.
host_token_of_agent() {
  "$venv/bin/python" - <<'PY'
import hashlib, sqlite3
token = open("/etc/polarizer/agent-token").read().strip()
digest = hashlib.sha256(token.encode()).hexdigest()
database = sqlite3.connect("/var/lib/polarizer/polarizer.db")
row = database.execute("SELECT name, used_ms FROM host_tokens WHERE digest = ?", (digest,)).fetchone()
print("none" if row is None else f"{row[0]} {'unspent' if row[1] is None else 'spent'}")
PY
}

echo "ansible test: the installed coordinator and agent start and the agent joins"
logs="$here/../target/ansible-run"
mkdir -p "$logs"
runuser -u polarizer -- /usr/local/bin/polarizer serve --config /etc/polarizer/coordinator.toml > "$logs/coordinator.log" 2>&1 &
coordinator=$!
/usr/local/bin/polarizer-agent --config /etc/polarizer/agent.toml > "$logs/agent.log" 2>&1 &
agent=$!
trap 'kill $agent $coordinator 2>/dev/null || true' EXIT
deadline=$((SECONDS + 30))
until /usr/local/bin/polarizer agents --data-dir /var/lib/polarizer --coordinator 127.0.0.1:7701 --json 2>/dev/null \
      | grep -q '"state": "online"'; do
  if [ $SECONDS -ge $deadline ]; then
    echo "the installed agent did not join within 30 s"; tail -20 "$logs/coordinator.log" "$logs/agent.log"; exit 1
  fi
  sleep 0.2
done
/usr/local/bin/polarizer agents --data-dir /var/lib/polarizer --coordinator 127.0.0.1:7701

echo "ansible test: the agent enrolled with a token of its own, now spent, that enrolls nobody else"
if cmp -s /etc/polarizer/agent-token /var/lib/polarizer/agent-token; then
  echo "the agent holds the coordinator's shared enrollment token, not one of its own"; exit 1
fi
[ ! -e "$here/fetched/agent-token" ] || { echo "the shared enrollment token was fetched to the controller"; exit 1; }
[ "$(host_token_of_agent)" = "local-agent spent" ] \
  || { echo "/etc/polarizer/agent-token is not a spent per-host token for local-agent: $(host_token_of_agent)"; exit 1; }
# Presented again by another agent (as a test running as root could): refused, exit status 78.
rogue_state=$(mktemp -d)
status=0
timeout 30 /usr/local/bin/polarizer-agent --config /etc/polarizer/agent.toml --name rogue \
  --state-dir "$rogue_state" --gossip 127.0.0.1:7711 > "$logs/rogue.log" 2>&1 || status=$?
rm -rf "$rogue_state"
if [ "$status" != 78 ] || ! grep -q "the enrollment token is wrong" "$logs/rogue.log"; then
  echo "an agent presenting the spent token was not refused (exit $status)"; tail -5 "$logs/rogue.log"; exit 1
fi
/usr/local/bin/polarizer agents --data-dir /var/lib/polarizer --coordinator 127.0.0.1:7701 --json \
  | "$venv/bin/python" -c 'import json, sys; names = [agent["name"] for agent in json.load(sys.stdin)]; sys.exit(None if names == ["local-agent"] else f"inventory: {names}")'
kill -TERM $agent $coordinator
wait $agent $coordinator || true
trap - EXIT

echo "ansible test: an agent holding a copy of the shared token (as an earlier role left) gets its own"
install -m 0600 /var/lib/polarizer/agent-token /etc/polarizer/agent-token
ansible-playbook "${extra[@]}" site.yml > "$here/../target/ansible-third.log" || { cat "$here/../target/ansible-third.log"; exit 1; }
[ "$(host_token_of_agent)" = "local-agent unspent" ] \
  || { echo "the copy of the shared token was not replaced by a per-host one: $(host_token_of_agent)"; exit 1; }
[ "$(stat -c %a /etc/polarizer/agent-token)" = 600 ] || { echo "the replaced token is not mode 0600"; exit 1; }
# Made as root in the service user's data dir: whatever SQLite added there still belongs to that user.
root_owned=$(find /var/lib/polarizer ! -user polarizer)
[ -z "$root_owned" ] || { echo "files in the data dir the service user does not own: $root_owned"; exit 1; }

echo "install test: the README's manual install, as written"
block=$(awk '/^### By hand/{found=1} found && /^```sh/{inside=1; next} inside && /^```/{exit} inside{print}' "$here/../README.md")
[ -n "$block" ] || { echo "no manual install block found in README.md"; exit 1; }
if [ "$(ps -p 1 -o comm=)" != systemd ]; then
  block=$(echo "$block" | grep -v '^systemctl ')
fi
block=${block//target\/release/$binary_dir}
block=${block//COORDINATOR-HOST/127.0.0.1}
block=${block//AGENT-NAME/$(hostname -s)}
(cd "$here/.." && bash -euo pipefail -c "$block")
/usr/local/bin/polarizer serve --check-config --config /etc/polarizer/coordinator.toml
/usr/local/bin/polarizer-agent --check-config --config /etc/polarizer/agent.toml
grep -q '^join = \["127.0.0.1:7700"\]' /etc/polarizer/agent.toml
systemd-analyze verify /etc/systemd/system/polarizer.service /etc/systemd/system/polarizer-agent.service
echo "install test: passed"
