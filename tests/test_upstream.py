"""coursegrader/upstream.py copies and overrides parts of nbclient and jupyter_client written for the versions it
pins: an upgrade must be read against them before it is trusted."""

from __future__ import annotations

import inspect
import sys

import jupyter_client
import nbclient
from nbclient import NotebookClient

from conftest import REPO
from coursegrader import upstream


def test_the_pinned_libraries_are_the_installed_ones():
    assert nbclient.__version__ == upstream.NBCLIENT, (
        f"nbclient {nbclient.__version__} is installed, upstream.py was written for {upstream.NBCLIENT}: compare "
        "NotebookClient.async_start_new_kernel_client, _async_cleanup_kernel and _async_check_alive with "
        "upstream.NotebookClientHooks, then update NBCLIENT")
    assert jupyter_client.__version__ == upstream.JUPYTER_CLIENT, (
        f"jupyter_client {jupyter_client.__version__} is installed, upstream.py was written for "
        f"{upstream.JUPYTER_CLIENT}: compare KernelClient.wait_for_ready with upstream.connected, and "
        "LocalProvisioner with provisioner.py, then update JUPYTER_CLIENT")


def test_the_overridden_methods_still_exist_upstream():
    """A rename upstream would leave an override that nothing calls: grading would go on, unguarded."""
    for name in ("async_start_new_kernel_client", "_async_cleanup_kernel", "_async_check_alive"):
        assert hasattr(NotebookClient, name), f"nbclient's NotebookClient has no {name} any more"
        assert name in vars(upstream.NotebookClientHooks), name
    source = inspect.getsource(NotebookClient.async_start_new_kernel_client)
    assert "self.kc.start_channels()" in source and "wait_for_ready" in source and "on_notebook_start" in source
    assert "_handle_kernel_info_reply" in inspect.getsource(jupyter_client.client.KernelClient._async_wait_for_ready)


def test_only_upstream_overrides_private_methods_of_the_libraries():
    """Private methods of nbclient's NotebookClient are overridden in upstream.py and nowhere else."""
    import coursegrader.execution

    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench

    private = {n for n, v in vars(NotebookClient).items()
               if n.startswith("_") and not n.startswith("__") and callable(v)}  # methods, not traitlets' tables
    for cls in (coursegrader.execution.GuardedExecute, bench.FloorClient):
        for klass in cls.__mro__:
            if klass.__module__.startswith("coursegrader.") and klass is not upstream.NotebookClientHooks:
                assert not private & set(vars(klass)), (klass, private & set(vars(klass)))


def test_the_prompt_client_makes_its_context_as_jupyter_client_does_with_a_short_reconnect_interval():
    """PromptKernelClient replaces jupyter_client's private context default: the client must still own (and destroy)
    the context it made, and its sockets must retry every RECONNECT_MS."""
    import zmq
    from jupyter_client.asynchronous import AsyncKernelClient

    source = inspect.getsource(AsyncKernelClient._context_default)
    assert "self._created_context = True" in source and "zmq.asyncio.Context()" in source, (
        "jupyter_client's AsyncKernelClient makes its context differently now: compare with "
        "upstream.PromptKernelClient")
    client = upstream.PromptKernelClient()
    try:
        assert client.context.getsockopt(zmq.RECONNECT_IVL) == upstream.RECONNECT_MS
        assert client._created_context, "the client must destroy the context it made, as jupyter_client's does"
    finally:
        client.context.destroy(linger=0)
