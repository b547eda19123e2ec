"""The parts of nbclient and jupyter_client that coursegrader copies or overrides: here, and nowhere else.

Each was written against the versions pinned below; tests/test_upstream.py fails when the installed ones
differ, so that an upgrade is a moment to read the upstream code again. Why no public hook serves:

- nbclient waits for a cell's reply with one long poll, which pyzmq's asyncio poller can miss (poll_in_slices);
  the only place to wrap the channels before their first message is `async_start_new_kernel_client`, which
  is public, so it is copied, with one change;
- jupyter_client's `wait_for_ready` always ends with a 0.2 s wait for a quiet IOPub, about 5% of a short
  notebook; `connected` is the same wait without it, and calls the private `_handle_kernel_info_reply` as
  `wait_for_ready` does;
- nbclient offers hooks around cells and the notebook, but none when it stops the kernel or finds it dead:
  GuardedExecute needs both (the tests' kernel stops with the student's; a dead kernel's exit code says why);
- a kernel client's sockets try again to connect every 100 ms (zmq's default), and the only place to give them
  another interval is the client's zmq context, made by a private default of jupyter_client's
  (PromptKernelClient).
"""

from __future__ import annotations

import time
from queue import Empty

import zmq
import zmq.asyncio
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_core.utils import ensure_async, run_sync
from nbclient.exceptions import DeadKernelError
from nbclient.util import run_hook
from traitlets import default

NBCLIENT = "0.11.0"
JUPYTER_CLIENT = "8.10.0"


class NotebookClientHooks:
    """For an nbclient NotebookClient (a mixin before it). Three methods of nbclient's, the only ones coursegrader
    overrides:

    - `async_start_new_kernel_client` (public, copied from nbclient 0.11.0): a kernel client that never misses a
      message (see poll_in_slices), from the moment it connects;
    - `_async_cleanup_kernel` (private): then calls `self.after_cleanup()`, where a subclass stops kernels of its
      own (nbclient has no hook after it stops its kernel);
    - `_async_check_alive` (private): calls `self.on_dead_kernel()` before nbclient raises DeadKernelError, while
      the kernel's exit code can still be read.

    `settle_iopub = False` also skips jupyter_client's last step of waiting for a new kernel: once the kernel
    has answered kernel_info and IOPub has delivered a message (so it is connected), it waits until IOPub has
    been quiet for 0.2 s. nbclient ignores messages that answer another request, so nothing depends on that
    wait, and 0.2 s is 5% of a short notebook's time.
    """

    settle_iopub = True

    async def async_start_new_kernel_client(self):
        """nbclient's own, but the channels poll in slices before the first message (the kernel_info request)."""
        self.kc = self.km.client()
        for channel in (self.kc.shell_channel, self.kc.iopub_channel):
            poll_in_slices(channel)
        try:
            await ensure_async(self.kc.start_channels())
            if self.settle_iopub:
                await ensure_async(self.kc.wait_for_ready(timeout=self.startup_timeout))
            else:
                await connected(self.kc, self.startup_timeout)
        except Exception:
            await self._async_cleanup_kernel()
            raise
        self.kc.allow_stdin = False
        await run_hook(self.on_notebook_start, notebook=self.nb)
        return self.kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)  # nbclient binds the sync one to its own

    async def after_cleanup(self) -> None:
        """After nbclient has stopped the kernel and its client (for a subclass)."""

    def on_dead_kernel(self) -> None:
        """nbclient has found the kernel dead (for a subclass)."""

    async def _async_cleanup_kernel(self) -> None:
        try:
            await super()._async_cleanup_kernel()
        finally:
            await self.after_cleanup()

    _cleanup_kernel = run_sync(_async_cleanup_kernel)  # nbclient binds the sync one to its own

    async def _async_check_alive(self) -> None:
        try:
            await super()._async_check_alive()
        except DeadKernelError:
            self.on_dead_kernel()
            raise


RECONNECT_MS = 10


class PromptKernelClient(AsyncKernelClient):
    """jupyter_client's AsyncKernelClient, but its sockets try again to connect every RECONNECT_MS instead of every
    100 ms. A client connects as soon as the kernel's process exists, and the kernel binds its sockets once
    ipykernel has started (about 50 ms for a forked kernel): with zmq's interval, the first request got its answer
    120-190 ms after the fork, and with this one 50 ms. Its context is made as jupyter_client's private default makes
    it (`_created_context`: the client destroys it with its channels), with that one option."""

    @default("context")
    def _prompt_context(self) -> zmq.asyncio.Context:
        self._created_context = True
        context = zmq.asyncio.Context()
        context.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        return context


async def connected(kc, timeout: float) -> None:
    """Wait until the kernel answers kernel_info and IOPub delivers a message: jupyter_client's
    `wait_for_ready` without its final wait for a quiet IOPub (see NotebookClientHooks)."""
    deadline = time.monotonic() + timeout
    while True:
        kc.kernel_info()
        try:
            reply = await kc.shell_channel.get_msg(timeout=1)
        except Empty:
            pass
        else:
            if reply["msg_type"] == "kernel_info_reply":
                try:
                    await kc.iopub_channel.get_msg(timeout=0.2)  # IOPub is connected: the kernel's status arrived
                except Empty:
                    pass  # not yet: a kernel publishes before our subscription reaches it; ask again
                else:
                    kc._handle_kernel_info_reply(reply)  # as wait_for_ready does: adapt to the kernel's protocol
                    return
        if not await kc.is_alive():
            raise RuntimeError("Kernel died before replying to kernel_info")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")


POLL_SLICE_SECONDS = 0.2


def poll_in_slices(channel) -> None:
    """Make `channel.get_msg(timeout)` wait in short polls instead of one long one.

    pyzmq's asyncio poll can miss the moment a message arrives on a socket (its file descriptor is
    edge-triggered) and then notices it only when the poll times out. nbclient waits for a cell's reply
    with one poll of the whole cell timeout, so a missed reply cost two minutes at random (seen about one
    run in two when two sandboxed kernels ran at once, over IPC). Each short poll looks at the socket
    afresh, so a missed arrival costs at most POLL_SLICE_SECONDS.
    """
    original = channel.get_msg

    async def get_msg(timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE_SECONDS if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await original(timeout=min(POLL_SLICE_SECONDS, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = get_msg
