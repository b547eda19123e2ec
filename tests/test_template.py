"""The tests' kernels forked from a template (template.py, provisioner.py), started the way GuardedExecute starts
them: jupyter_client's KernelManager with the template box's kernel spec, which names the provisioner."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from conftest import SANDBOX
from coursegrader import provisioner
from coursegrader.sandbox import KERNEL_NAME


@pytest.fixture
def template(tmp_path):
    folder = tmp_path / "tests"
    folder.mkdir()
    (folder / "data.txt").write_text("the tests' data")
    made = provisioner.Template(str(folder), sandbox=SANDBOX, preload=("numpy",))
    yield made
    made.close()


def start(template) -> tuple[KernelManager, object, socket.socket]:
    """A kernel forked by the template, its client, and the grader's end of its channel."""
    ours, theirs = socket.socketpair()
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(template.box.kernels)]))
    km.transport = "ipc"
    km.connection_file = template.box.connection_file()
    km.start_kernel(pass_fds=(theirs.fileno(),))
    theirs.close()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc, ours


def evaluate(kc, code: str, expression: str) -> str:
    reply = kc.execute_interactive(code, user_expressions={"x": expression}, timeout=60, output_hook=lambda msg: None)
    value = reply["content"]["user_expressions"]["x"]
    assert value["status"] == "ok", value
    return value["data"]["text/plain"]


def test_each_kernel_starts_clean_in_a_folder_of_its_own(template):
    first, first_client, first_end = start(template)
    second, second_client, second_end = start(template)
    try:
        assert isinstance(first.provisioner, provisioner.TemplateProvisioner)
        seen = [evaluate(kc, "import os, sys; secret = 42", "(os.getcwd(), os.environ['HOME'], 'numpy' in sys.modules, "
                                                            "open('data.txt').read(), 'secret' in globals())")
                for kc in (first_client, second_client)]
        (cwd1, home1, numpy1, data1, _), (cwd2, home2, numpy2, data2, _) = [eval(s) for s in seen]
        assert numpy1 and numpy2, "the template imported numpy for its kernels"
        assert data1 == data2 == "the tests' data", "each kernel works in a copy of the tests' folder"
        assert cwd1 != cwd2 and home1 != home2, "each kernel has a folder and a HOME of its own"
        assert evaluate(second_client, "", "'secret' in globals()") == "True"
        assert evaluate(first_client, "del secret", "'secret' in globals()") == "False"
        fd = first.provisioner.channel_fd
        assert evaluate(first_client, "", f"__import__('os').fstat({fd}).st_mode & 0o170000 == 0o140000") == "True", (
            "the kernel holds its end of the channel under the number the provisioner reports")
        first_end.sendall(b"ping")
        assert evaluate(first_client, f"import socket; s = socket.socket(fileno={fd}); got = s.recv(4)", "got") == "b'ping'"
    finally:
        for kc in (first_client, second_client):
            kc.stop_channels()
        first.shutdown_kernel(now=True)
        assert first.provisioner is None or not first.is_alive()
    assert second.is_alive(), "stopping one kernel leaves the others"
    second.shutdown_kernel(now=True)
    first_end.close()
    second_end.close()
    assert list(template.box.runtime.glob("k-*")) == [], "a stopped kernel's folder is removed"


def test_a_kernel_that_dies_reports_its_exit_code(template):
    km, kc, end = start(template)
    try:
        kc.execute("import os; os._exit(3)")
        deadline = time.monotonic() + 30
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not km.is_alive()
        assert km.provisioner.process.poll() == 3
    finally:
        kc.stop_channels()
        km.cleanup_resources()
        end.close()


def test_the_template_and_its_folders_go_when_it_is_closed(tmp_path):
    folder = tmp_path / "tests"
    folder.mkdir()
    template = provisioner.template_for(str(folder), SANDBOX, ())
    assert provisioner.template_for(str(folder), SANDBOX, ()) is template, "one template per tests' folder"
    km, kc, end = start(template)
    kc.stop_channels()
    box = Path(template.box.workdir)
    provisioner.close_all()
    assert template.process.poll() is not None and not box.exists()
    deadline = time.monotonic() + 10
    while km.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not km.is_alive(), "the template's kernels end with it"
    end.close()
    replacement = provisioner.template_for(str(folder), SANDBOX, ())
    assert replacement is not template and replacement.alive()
    provisioner.close_all()
    assert os.listdir(tmp_path) == ["tests"]


def test_the_provisioner_still_fits_the_jupyter_client_it_was_written_against():
    """ForkedKernel stands in for the subprocess.Popen that jupyter_client's LocalProvisioner keeps in `process`:
    LocalProvisioner's poll, wait, send_signal, kill and terminate call it. A new jupyter_client may use it
    otherwise: read local_provisioner.py again, then move this pin."""
    import inspect

    import jupyter_client
    from jupyter_client.provisioning import LocalProvisioner

    assert jupyter_client.__version__ == "8.10.0", (
        f"jupyter_client {jupyter_client.__version__}: check coursegrader/provisioner.py against its LocalProvisioner")
    used = {name for name in ("poll", "wait", "send_signal", "kill", "terminate")
            if f"self.process.{name}(" in inspect.getsource(LocalProvisioner)}
    assert used <= {"poll", "wait", "send_signal", "kill", "terminate"} and "poll" in used
    stand_in = provisioner.ForkedKernel(None, 1)
    assert all(hasattr(stand_in, name) for name in used | {"stdin", "stdout", "stderr", "pid", "returncode"})


def test_a_sandboxed_kernels_stderr_goes_to_the_log_not_the_terminal(tmp_path, caplog, capfd):
    """The student's kernel starts through SandboxProvisioner: in its box's folder copy, with the limits, and what it
    writes to its stderr reaches the logger `coursegrader.kernel` (shown by `coursegrader -vv`), not the terminal."""
    import logging

    from coursegrader.sandbox import KernelBox, Limits

    folder = tmp_path / "student"
    folder.mkdir()
    caplog.set_level(logging.DEBUG, logger="coursegrader.kernel")
    with KernelBox(str(folder), sandbox=SANDBOX, limits=Limits(open_files=512)) as box:
        km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(box.kernels)]))
        km.transport = "ipc"
        km.connection_file = box.connection_file()
        km.start_kernel(cwd=str(folder))
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            assert isinstance(km.provisioner, provisioner.SandboxProvisioner)
            seen = evaluate(kc, "import os, resource; os.write(2, b'a line on fd 2\\n')",
                            "(os.getcwd() != os.path.realpath(os.environ['HOME']), "
                            "resource.getrlimit(resource.RLIMIT_NOFILE)[1])")
            assert eval(seen) == (True, 512), f"the kernel runs with the box's limits and its own HOME: {seen}"
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    deadline = time.monotonic() + 5
    while "a line on fd 2" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "a line on fd 2" in caplog.text, "the kernel's stderr reaches the logger coursegrader.kernel"
    assert "a line on fd 2" not in capfd.readouterr().err, "the kernel's stderr never reaches the terminal"


def test_a_killed_kernel_is_gone_when_kill_returns(template, tmp_path):
    """jupyter_client looks for a killed kernel's exit only every 0.1 s: the provisioners' kill returns once the kernel
    is gone (the template waits for a kernel it sent SIGKILL; SandboxProvisioner.kill waits for its process), so that
    jupyter_client's first look finds it gone."""
    import asyncio

    from coursegrader.sandbox import KernelBox

    km, kc, end = start(template)
    try:
        asyncio.run(km.provisioner.kill())
        assert km.provisioner.process.poll() == -9, "the forked kernel must be gone, its exit code known, once kill returns"
    finally:
        kc.stop_channels()
        km.cleanup_resources()
        end.close()
    folder = tmp_path / "student"
    folder.mkdir()
    with KernelBox(str(folder), sandbox=SANDBOX) as box:
        km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(box.kernels)]))
        km.transport = "ipc"
        km.connection_file = box.connection_file()
        km.start_kernel(cwd=str(folder))
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            evaluate(kc, "import numpy", "1")  # a kernel with memory to release as it dies
            assert isinstance(km.provisioner, provisioner.SandboxProvisioner)
            asyncio.run(km.provisioner.kill())
            assert km.provisioner.process.poll() is not None, "the sandboxed kernel must be gone once kill returns"
        finally:
            kc.stop_channels()
            km.cleanup_resources()
