"""One model server's engine loop, modelled after vLLM's V1 scheduler; it never reads a clock.

A driver (the real-time server or the discrete-event harness) calls `step(now)`, which schedules one iteration
and returns its duration and the outputs that become visible when it ends; the driver calls `step` again at
`now + duration`. Each iteration:

1. Running sequences, oldest first, get the tokens they still need (`num_tokens - num_computed`, so 1 while
   decoding), prompt chunks capped by the shared `max_num_batched_tokens` budget (chunked prefill). When the
   cache has no free block for a sequence, the newest running sequence is preempted (its blocks freed, its work
   recomputed later from its prefix-cache hit) until the allocation fits.
2. Waiting requests, first come first served, join while there is budget and fewer than `max_num_seqs` running.
   A request whose LoRA adapter is not loaded while all `max_loras` slots hold adapters of running requests is
   passed over this iteration. On joining, the longest cached prefix is reused (never the prompt's last token,
   which must be computed to sample). If the cached fraction is below the request's `cache_hit_threshold` (or the
   engine's global one), the request finishes at once with `finish_reason="cache_threshold"` and no compute.
   A preempted request is checked again each time it would rejoin, with the prefix cached then (its blocks may
   have been evicted meanwhile): below the threshold it finishes the same way, keeping the tokens it already
   produced, instead of recomputing its prompt here (vLLM #24520's preemption case: a P/D decode engine should not
   prefill).
3. A sequence whose prompt is fully computed samples one token per iteration until `max_tokens`.

P/D: on a decode engine a request with `kv_transfer_params.do_remote_prefill` receives its prompt's KV over the
network (`kv_transfer_setup_s + kv_transfer_per_token_s x uncached tokens`, off the compute budget) and then
computes only the last prompt token. On a prefill engine `do_remote_decode` requests stop after their first
token and return the `kv_transfer_params` a decode engine needs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from kvroute.simulator.engine.block_manager import BlockManager, chain_hashes, root_hash
from kvroute.simulator.engine.kv_events import KVEvent
from kvroute.simulator.engine.profiles import Profile
from kvroute.simulator.engine.request import EngineRequest, FinishReason, RequestOutput, Sequence, StepResult


class Engine:
    def __init__(
        self,
        profile: Profile,
        *,
        engine_id: str = "engine-0",
        hash_seed: int = 0,
        global_cache_hit_threshold: float | None = None,
        record_kv_events: bool = False,
    ) -> None:
        self.profile = profile
        self.engine_id = engine_id
        self.hash_seed = hash_seed
        self.global_cache_hit_threshold = global_cache_hit_threshold
        self.blocks = BlockManager(profile.num_gpu_blocks, profile.block_size, record_events=record_kv_events)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.transferring: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self._roots: dict[str | None, int] = {}
        self._pending: list[RequestOutput] = []
        # Counters, as vLLM exports them.
        self.prefix_queries_tokens = 0
        self.prefix_hits_tokens = 0
        self.num_preemptions = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    # ---- driver interface -------------------------------------------------------------------------------
    def add_request(self, request: EngineRequest) -> None:
        if request.request_id in self._by_id:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if not request.prompt_token_ids:
            raise ValueError("prompt must contain at least one token")
        if request.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        total = len(request.prompt_token_ids) + request.max_tokens
        if total > self.profile.max_model_len:
            raise ValueError(
                f"prompt ({len(request.prompt_token_ids)} tokens) plus max_tokens ({request.max_tokens}) exceeds "
                f"max_model_len ({self.profile.max_model_len})"
            )
        if -(-total // self.profile.block_size) > self.profile.num_gpu_blocks:
            raise ValueError(f"request needs {total} tokens of KV cache; the engine holds fewer")
        root = self._roots.get(request.lora_name)
        if root is None:
            root = self._roots[request.lora_name] = root_hash(self.hash_seed, request.lora_name)
        seq = Sequence(request, chain_hashes(request.prompt_token_ids, self.profile.block_size, root))
        self._by_id[request.request_id] = seq
        self.waiting.append(seq)

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is; its blocks are freed. False if unknown or already finished."""
        seq = self._by_id.pop(request_id, None)
        if seq is None:
            return False
        for queue in (self.running, self.transferring):
            if seq in queue:
                queue.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.release(seq.blocks)
        seq.blocks = []
        return True

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.transferring or self._pending)

    def next_wakeup(self) -> float | None:
        """When an idle engine has something to do again (a KV transfer landing), if ever."""
        times = [s.transfer_ready_at for s in self.transferring if s.transfer_ready_at is not None]
        return min(times) if times else None

    def step(self, now: float) -> StepResult:
        self._land_transfers(now)
        budget = self.profile.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        budget = self._schedule_running(scheduled, budget)
        self._schedule_waiting(scheduled, budget, now)
        return self._execute(scheduled, now)

    def drain_kv_events(self) -> list[KVEvent]:
        return self.blocks.drain_events()

    # ---- observable state ----------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + len(self.transferring)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def kv_usage(self) -> float:
        return self.blocks.usage

    def lora_adapters(self) -> tuple[list[str], list[str]]:
        """(running adapters, waiting adapters), as in `vllm:lora_requests_info`."""
        running = sorted({s.request.lora_name for s in self.running if s.request.lora_name})
        waiting = sorted({s.request.lora_name for s in self.waiting if s.request.lora_name})
        return running, waiting

    def cached_prefix_tokens(self, request: EngineRequest) -> int:
        """How many prompt tokens of `request` this engine would serve from cache right now (oracle view)."""
        root = root_hash(self.hash_seed, request.lora_name)
        hashes = chain_hashes(request.prompt_token_ids, self.profile.block_size, root)
        limit = (len(request.prompt_token_ids) - 1) // self.profile.block_size
        return len(self.blocks.match_prefix(hashes, limit)) * self.profile.block_size

    # ---- scheduling ------------------------------------------------------------------------------------------
    def _schedule_running(self, scheduled: list[tuple[Sequence, int]], budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            want = min(seq.num_tokens - seq.num_computed, budget)
            while not self._reserve(seq, want):
                victim = self.running.pop()
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                scheduled.append((seq, want))
                budget -= want
                index += 1
        return budget

    def _schedule_waiting(self, scheduled: list[tuple[Sequence, int]], budget: int, now: float) -> None:
        skipped: list[Sequence] = []
        active_loras = {s.request.lora_name for s in self.running if s.request.lora_name}
        profile = self.profile
        while self.waiting and budget > 0 and len(self.running) < profile.max_num_seqs:
            seq = self.waiting[0]
            lora = seq.request.lora_name
            if lora and lora not in active_loras and len(active_loras) >= profile.max_loras:
                skipped.append(self.waiting.popleft())
                continue
            fresh = seq.num_cached_tokens < 0
            if not seq.blocks:
                hit = self.blocks.match_prefix(seq.block_hashes, (seq.prompt_len - 1) // profile.block_size)
                hit_tokens = len(hit) * profile.block_size
                if (fresh or seq.preempted) and self._below_threshold(seq, hit_tokens):
                    self.waiting.popleft()
                    self._finish_unscheduled(seq, hit_tokens)
                    continue
                if fresh:
                    seq.num_cached_tokens = hit_tokens
                    self.prefix_queries_tokens += seq.prompt_len
                    self.prefix_hits_tokens += hit_tokens
                self.blocks.acquire(hit)
                seq.blocks = list(hit)
                seq.num_computed = hit_tokens
                seq.num_registered = len(hit)
            if not seq.transferred and self._is_remote_prefill(seq):
                if not self._reserve(seq, seq.prompt_len - seq.num_computed):
                    self._unpin(seq)
                    break
                self.waiting.popleft()
                uncached = seq.prompt_len - seq.num_computed
                seq.transfer_ready_at = now + profile.kv_transfer_setup_s + profile.kv_transfer_per_token_s * uncached
                seq.scheduled_at = now
                self.transferring.append(seq)
                continue
            want = min(seq.num_tokens - seq.num_computed, budget)
            if not self._reserve(seq, want):
                self._unpin(seq)
                break
            self.waiting.popleft()
            if seq.scheduled_at is None:
                seq.scheduled_at = now
            self.running.append(seq)
            if lora:
                active_loras.add(lora)
            scheduled.append((seq, want))
            budget -= want
        self.waiting.extendleft(reversed(skipped))

    def _execute(self, scheduled: list[tuple[Sequence, int]], now: float) -> StepResult:
        outputs, self._pending = self._pending, []
        prefill_tokens = decode_seqs = decode_context = 0
        finished: list[Sequence] = []
        for seq, count in scheduled:
            if count == 1 and seq.num_computed >= seq.prompt_len - 1:
                decode_seqs += 1
                decode_context += seq.num_computed
            else:
                prefill_tokens += count
            seq.num_computed += count
            self._register_full_blocks(seq)
            if seq.num_computed < seq.num_tokens:
                continue  # a prefill chunk: no token sampled yet
            seq.num_output += 1
            self.generation_tokens_total += 1
            if seq.num_output == 1:
                self.prompt_tokens_total += seq.prompt_len
            reason = None
            if seq.num_output >= seq.request.max_tokens or self._remote_decode(seq):
                reason = FinishReason.LENGTH
                finished.append(seq)
            outputs.append(self._output(seq, 1, reason))
        for seq in finished:
            self._finish(seq)
        duration = self.profile.step_time(prefill_tokens, decode_seqs, decode_context) if scheduled else 0.0
        return StepResult(duration, outputs, prefill_tokens, decode_seqs)

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _reserve(self, seq: Sequence, new_tokens: int) -> bool:
        needed = -(-(seq.num_computed + new_tokens) // self.profile.block_size) - len(seq.blocks)
        if needed <= 0:
            return True
        fresh = self.blocks.allocate(needed)
        if fresh is None:
            return False
        seq.blocks.extend(fresh)
        return True

    def _register_full_blocks(self, seq: Sequence) -> None:
        full = min(seq.num_computed, seq.prompt_len) // self.profile.block_size
        if full > seq.num_registered:
            self.blocks.register(
                seq.blocks,
                seq.block_hashes[:full],
                seq.num_registered,
                seq.request.prompt_token_ids,
                seq.request.lora_name,
            )
            seq.num_registered = full

    def _unpin(self, seq: Sequence) -> None:
        self.blocks.release(seq.blocks)
        seq.blocks = []
        seq.num_computed = 0
        seq.num_registered = 0

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        seq.preempted = True
        self._unpin(seq)
        self.waiting.appendleft(seq)

    def _land_transfers(self, now: float) -> None:
        landed = [s for s in self.transferring if s.transfer_ready_at is not None and s.transfer_ready_at <= now]
        for seq in landed:
            if len(self.running) >= self.profile.max_num_seqs:
                break  # stays parked with its blocks until a batch slot frees
            self.transferring.remove(seq)
            seq.transferred = True
            seq.num_computed = seq.prompt_len - 1
            self._register_full_blocks(seq)
            self.running.append(seq)

    def _below_threshold(self, seq: Sequence, hit_tokens: int) -> bool:
        threshold = seq.request.cache_hit_threshold
        if threshold is None:
            threshold = self.global_cache_hit_threshold
        return threshold is not None and threshold > 0 and hit_tokens / seq.prompt_len < threshold

    def _finish_unscheduled(self, seq: Sequence, hit_tokens: int) -> None:
        if seq.num_cached_tokens < 0:  # first admission; a preempted request keeps what it reported then
            seq.num_cached_tokens = hit_tokens
        self._by_id.pop(seq.request_id, None)
        self._pending.append(self._output(seq, 0, FinishReason.CACHE_THRESHOLD))

    def _finish(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._by_id.pop(seq.request_id, None)
        self.blocks.release(seq.blocks)
        seq.blocks = []

    def _output(self, seq: Sequence, new_tokens: int, reason: FinishReason | None) -> RequestOutput:
        params = None
        if reason is FinishReason.LENGTH and self._remote_decode(seq):
            params = {
                "do_remote_prefill": True,
                "do_remote_decode": False,
                "remote_engine_id": self.engine_id,
                "remote_block_ids": list(range(len(seq.block_hashes))),
                "remote_host": None,
                "remote_port": None,
            }
        return RequestOutput(
            request_id=seq.request_id,
            new_tokens=new_tokens,
            num_output_tokens=seq.num_output,
            num_prompt_tokens=seq.prompt_len,
            num_cached_tokens=max(seq.num_cached_tokens, 0),
            finish_reason=reason,
            kv_transfer_params=params,
        )

    @staticmethod
    def _is_remote_prefill(seq: Sequence) -> bool:
        params: dict[str, Any] = seq.request.kv_transfer_params or {}
        return bool(params.get("do_remote_prefill"))

    @staticmethod
    def _remote_decode(seq: Sequence) -> bool:
        params: dict[str, Any] = seq.request.kv_transfer_params or {}
        return bool(params.get("do_remote_decode"))
