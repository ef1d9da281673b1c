#!/usr/bin/env python3
"""Checks what ansible-lint does not: secrets never reach a log or a diff, and the shipped units keep
their limits. Run by ansible/test.sh; needs only python3 with PyYAML.

- Every task or handler of the roles that mentions a token, credential, secret or key (in its name or its
  arguments), or a variable such a task registers (a command's output can be a token), has `no_log: true`
  (or sits in a block that has it); those whose module can print a diff of file contents also have
  `diff: false`.
- systemd/polarizer.service bounds the coordinator: `MemoryMax=` and `TasksMax=`.
- systemd/polarizer-agent.service does not restart an agent the coordinator refused:
  `RestartPreventExitStatus=` (the agent's unit test checks the value against the agent's exit status).
"""

import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
SECRET_WORDS = re.compile(r"token|credential|secret|password|private|\bkeys?\b", re.IGNORECASE)
# Modules that print the old and new contents of a file under --diff.
DIFF_SHOWS_CONTENT = {"copy", "template", "fetch", "get_url", "lineinfile", "blockinfile", "replace"}
TASK_KEYWORDS = {
    "name", "when", "loop", "loop_control", "notify", "register", "become", "become_user", "delegate_to",
    "no_log", "diff", "tags", "changed_when", "failed_when", "vars", "environment", "listen",
    "ignore_errors", "run_once", "check_mode", "with_items", "until", "retries", "delay",
}
BLOCK_KEYS = ("block", "rescue", "always")


def module_of(task):
    """The task's module, without its collection prefix (ansible.builtin.copy -> copy)."""
    modules = [key for key in task if key not in TASK_KEYWORDS and key not in BLOCK_KEYS]
    return modules[0].rsplit(".", 1)[-1] if modules else None


def tasks_in(items, inherited_no_log=False):
    """Every task in a task list, with whether an enclosing block sets no_log."""
    for task in items or []:
        no_log = task.get("no_log", inherited_no_log) is True
        if any(key in task for key in BLOCK_KEYS):
            for key in BLOCK_KEYS:
                yield from tasks_in(task.get(key), no_log)
        else:
            yield task, no_log


def mentions_secret(task, secret_registers):
    """Whether a task names a secret, or uses what a secret task registered."""
    text = yaml.safe_dump(task)
    return bool(SECRET_WORDS.search(text)) or any(
        re.search(rf"\b{re.escape(name)}\b", text) for name in secret_registers
    )


def secret_task_problems(path):
    problems = []
    secret_registers = set()
    for task, no_log in tasks_in(yaml.safe_load(path.read_text())):
        if not mentions_secret(task, secret_registers):
            continue
        if "register" in task:
            secret_registers.add(task["register"])
        where = f"{path.relative_to(HERE)}: task {task.get('name', '(unnamed)')!r}"
        if not no_log:
            problems.append(f"{where} handles a secret without `no_log: true`")
        if module_of(task) in DIFF_SHOWS_CONTENT and task.get("diff") is not False:
            problems.append(f"{where} writes a secret without `diff: false`")
    return problems


def unit_settings(path):
    """`Key=` settings of a unit file's [Service] section (a key set twice keeps every value)."""
    settings, section = {}, None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_problems():
    required = {
        "polarizer.service": ("MemoryMax", "TasksMax"),
        "polarizer-agent.service": ("RestartPreventExitStatus",),
    }
    problems = []
    for unit, keys in required.items():
        settings = unit_settings(HERE.parent / "systemd" / unit)
        problems += [f"systemd/{unit}: no {key}= in [Service]" for key in keys if not settings.get(key, [""])[-1]]
    return problems


def main():
    role_files = sorted(HERE.glob("roles/*/tasks/*.yml")) + sorted(HERE.glob("roles/*/handlers/*.yml"))
    problems = [problem for path in role_files for problem in secret_task_problems(path)]
    problems += unit_problems()
    for problem in problems:
        print(f"policy: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"policy: {len(role_files)} task files and 2 units checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
