"""The Silkie-vs-base Space's gradio 6 Blocks: a blind battle, a named side-by-side, a leaderboard and the
stateless ``compare`` endpoint. Built by ``spaces/silkie-vs-base/app.py`` and by ``vlfeedback space``.

The generating functions are passed through ``gpu`` (``spaces.GPU`` on ZeroGPU, a no-op elsewhere) so that the
decorator wraps exactly the code that needs the accelerator: a sync generator taking picklable arguments.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from vlfeedback_kit.eval.arena.board import BOARD_HEADERS, board
from vlfeedback_kit.eval.arena.config import VOTER_STORAGE_KEY, ArenaConfig, contenders
from vlfeedback_kit.eval.arena.limits import LimitError, Limits, VisitorLimiter
from vlfeedback_kit.eval.arena.store import VoteStore, image_sha256, privacy_notice, vote_record
from vlfeedback_kit.eval.arena.streaming import stream_pair
from vlfeedback_kit.files import child
from vlfeedback_kit.serving import BASE, SILKIE, GenerationSettings, ServedModel

logger = logging.getLogger(__name__)

VOTE_LABELS = {"a": "👈 A is better", "b": "👉 B is better", "tie": "🤝 Tie", "bothbad": "👎 Both are bad"}
NAMED_LABELS = {**VOTE_LABELS, "a": "👈 Silkie is better", "b": "👉 Base is better"}

INTRO = """# 🧈 Silkie vs its base
Silkie is its base vision-language model plus a LoRA adapter trained with DPO on VLFeedback. Both answer your
question about your image **at once, from one model in memory** (the adapter switched per row). In the blind battle
you don't know which side is Silkie: vote, then the names are revealed. Votes feed the leaderboard and the
[VLFeedback](https://huggingface.co/datasets/MMInstruction/VLFeedback) human-agreement study."""


def no_gpu(duration: Any = None, **_: Any) -> Callable:
    """Stand-in for ``spaces.GPU(duration=...)`` off ZeroGPU: returns the function unchanged."""
    return lambda fn: fn


def build_app(
    served: ServedModel,
    config: ArenaConfig,
    store: VoteStore,
    gpu: Callable = no_gpu,
    examples: list[list[Any]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> gr.Blocks:
    """The arena's Blocks, queued (``config.queue_size``); ``gpu`` is ``spaces.GPU`` or :func:`no_gpu`; ``clock``
    times the rate limits (tests freeze it)."""
    sides = contenders(served)
    limits = Limits.of(config)
    battle_rate = VisitorLimiter(config.battles_per_minute, config.clients_per_address, config.proxy_hops, clock)
    vote_rate = VisitorLimiter(config.votes_per_minute, config.clients_per_address, config.proxy_hops, clock)
    stable_voters = bool(config.voter_secret)
    voter_secret = config.voter_secret or secrets.token_urlsafe(32)
    if not stable_voters:
        logger.warning(
            "ARENA_VOTER_SECRET is not set: voter ids use a key made at start and do not survive a "
            "restart (votes record voter_id_survives_restart: false); set it as a Space secret"
        )

    @gpu(duration=config.gpu_duration_s)
    def generate_pair(image: Any, question: str, adapters: list[str], settings: Any) -> Iterator[tuple[str, str]]:
        yield from stream_pair(served, image, question, adapters, settings, max_time=config.time_limit_s)

    def compare(image_path: str | None, question: str, request: gr.Request) -> tuple[str, str]:
        """Stateless: (image, question) → (Silkie's answer, the base's answer), greedy, default length; the same
        input limits and the same rate (one battle a call) as the page."""
        try:
            image, question = limits.prompt(image_path, question)
            battle_rate.hit(request, "battles or /compare calls")
        except LimitError as err:
            raise gr.Error(str(err)) from None
        *_, answers = generate_pair(image, question, [SILKIE, BASE], config.settings())
        return answers

    def ensure_voter(voter: str | None) -> str:
        return voter or uuid.uuid4().hex

    def starter(named: bool) -> Callable:
        def start(image_path: str | None, question: str, tokens: float, temperature: float, voter: str,
                  request: gr.Request) -> tuple:  # fmt: skip
            return begin(image_path, question, tokens, temperature, voter, named, request)

        return start

    def voter_for(choice: str) -> Callable:
        def cast(state: dict | None, voter: str, request: gr.Request) -> tuple:
            return vote(choice, state, voter, request)

        return cast

    def begin(image_path: str | None, question: str, tokens: float, temperature: float, voter: str, named: bool,
              request: gr.Request) -> tuple:  # fmt: skip
        try:
            image, question = limits.prompt(image_path, question)
            battle_rate.hit(request, "battles or /compare calls")
        except LimitError as err:
            raise gr.Error(str(err)) from None
        adapters = [SILKIE, BASE] if named or random.random() < 0.5 else [BASE, SILKIE]
        state = {"battle_id": uuid.uuid4().hex, "mode": "side_by_side" if named else "battle", "adapters": adapters,
                 "image": image, "question": question, "settings": config.settings(tokens, temperature).to_dict(),
                 "answers": ["", ""], "done": False, "voted": False}  # fmt: skip
        user = [{"role": "user", "content": question}]
        return (state, list(user), list(user), *vote_buttons(False), gr.Button(interactive=False), "")

    def respond(state: dict, history_a: list, history_b: list) -> Iterator[tuple]:
        settings = GenerationSettings(**state["settings"])
        answers = ("", "")
        unchanged = [gr.skip()] * (1 + len(VOTE_LABELS))  # the state and the buttons stay as they are while streaming
        for answers in generate_pair(state["image"], state["question"], state["adapters"], settings):
            yield (unchanged[0], [*history_a, {"role": "assistant", "content": answers[0]}],
                   [*history_b, {"role": "assistant", "content": answers[1]}], *unchanged[1:])  # fmt: skip
        done = {**state, "answers": list(answers), "done": True}
        yield (done, [*history_a, {"role": "assistant", "content": answers[0]}],
               [*history_b, {"role": "assistant", "content": answers[1]}], *vote_buttons(True))  # fmt: skip

    def vote(choice: str, state: dict | None, voter: str, request: gr.Request) -> tuple:
        if not state or not state.get("done"):
            raise gr.Error("Ask a question first; you can vote once both answers are complete.")
        if state.get("voted"):
            raise gr.Error("This battle already has your vote. Start a new battle.")
        try:
            vote_rate.hit(request, "votes")
        except LimitError as err:
            raise gr.Error(str(err)) from None
        sha, png = image_sha256(state["image"])
        model_a, model_b = (sides[name] for name in state["adapters"])
        record = vote_record(battle_id=state["battle_id"], mode=state["mode"], model_a=model_a, model_b=model_b,
                             vote=choice, voter=voter or "anonymous", prompt=state["question"],
                             answer_a=state["answers"][0], answer_b=state["answers"][1],
                             settings=GenerationSettings(**state["settings"]), image_sha256=sha,
                             voter_id_survives_restart=stable_voters)  # fmt: skip
        store.add(record, png)
        reveal = (f"### Model A: {model_a.name} (`{model_a.record()}`)\n### Model B: {model_b.name} "
                  f"(`{model_b.record()}`)\nThanks — your vote is recorded.")  # fmt: skip
        if record["names_model"]:
            reveal += " An answer named its model, so this vote is kept but left off the leaderboard."
        return ({**state, "voted": True}, reveal, *vote_buttons(False), gr.Button(interactive=True))

    def leaderboard() -> tuple[str, list[list[Any]]]:
        result = board(store.votes(), sides[SILKIE], sides[BASE], min_votes=config.min_votes)
        return result.note, result.rows

    def new_battle() -> tuple:
        return (None, [], [], *vote_buttons(False), gr.Button(interactive=True), "", None, "")

    with gr.Blocks(title="Silkie vs base", delete_cache=(3600, 3600)) as demo:  # uploads gone within two hours
        voter = gr.BrowserState(None, storage_key=VOTER_STORAGE_KEY, secret=voter_secret)
        gr.Markdown(INTRO)
        gr.Markdown(lambda: privacy_notice(store, stable_voters, config), elem_id="privacy")
        with gr.Tabs():
            with gr.Tab("⚔️ Battle (blind)", id="battle"):
                battle = gr.State(None)
                with gr.Row():
                    chat_a = gr.Chatbot(label="Model A", height=320, elem_id="chat_a")
                    chat_b = gr.Chatbot(label="Model B", height=320, elem_id="chat_b")
                reveal = gr.Markdown(elem_id="reveal")
                with gr.Row():
                    buttons = [gr.Button(VOTE_LABELS[k], interactive=False, elem_id=f"vote_{k}") for k in VOTE_LABELS]
                with gr.Row():
                    image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], height=240,
                                     elem_id="image")  # fmt: skip
                    with gr.Column():
                        question = gr.Textbox(label="Question", placeholder="Ask about the image…", lines=3,
                                              max_length=config.max_prompt_chars, elem_id="question")  # fmt: skip
                        send = gr.Button("Send", variant="primary", elem_id="send")
                        with gr.Row():
                            regenerate = gr.Button("🔄 Regenerate", interactive=False, elem_id="regenerate")
                            clear = gr.Button("🎲 New battle", elem_id="new_battle")
                with gr.Accordion("Parameters", open=False):
                    tokens = gr.Slider(1, config.max_new_tokens_limit, value=config.max_new_tokens, step=1,
                                       label="Max new tokens")  # fmt: skip
                    temperature = gr.Slider(0.0, 1.5, value=config.temperature, step=0.05, label="Temperature")
                if examples:
                    gr.Examples(examples, [image, question], label="Held-out VLFeedback prompts")
            with gr.Tab("👀 Side by side (named)", id="named"):
                named_state = gr.State(None)
                with gr.Row():
                    named_a = gr.Chatbot(label=f"{sides[SILKIE].name} ({sides[SILKIE].record()})", height=320,
                                         elem_id="named_a")  # fmt: skip
                    named_b = gr.Chatbot(label=f"{sides[BASE].name} ({sides[BASE].record()})", height=320,
                                         elem_id="named_b")  # fmt: skip
                named_reveal = gr.Markdown(elem_id="named_reveal")
                with gr.Row():
                    named_buttons = [gr.Button(NAMED_LABELS[k], interactive=False, elem_id=f"named_vote_{k}")
                                     for k in VOTE_LABELS]  # fmt: skip
                with gr.Row():
                    named_image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], height=240,
                                           elem_id="named_image")  # fmt: skip
                    with gr.Column():
                        named_question = gr.Textbox(label="Question", lines=3, max_length=config.max_prompt_chars,
                                                    elem_id="named_question")  # fmt: skip
                        named_send = gr.Button("Send", variant="primary", elem_id="named_send")
                        named_regenerate = gr.Button("🔄 Regenerate", interactive=False)
            with gr.Tab("🏆 Leaderboard", id="leaderboard") as board_tab:
                board_note = gr.Markdown(elem_id="board_note")
                board_table = gr.Dataframe(headers=BOARD_HEADERS, interactive=False, elem_id="board")
                refresh = gr.Button("Refresh")
            with gr.Tab("API", id="api"):
                compare_image = gr.Image(type="filepath", label="Image")
                compare_question = gr.Textbox(label="Question")
                compare_button = gr.Button("Compare")
                compare_a = gr.Textbox(label="Silkie")
                compare_b = gr.Textbox(label="Base")
                gr.Markdown("`Client(url).predict(handle_file(path), question, api_name='/compare')` returns "
                            "(Silkie's answer, the base's answer).")  # fmt: skip

        demo.load(ensure_voter, voter, voter, api_visibility="private")
        for named, (img, text, state, left, right, btns, note, send_btn, regen) in {
            False: (image, question, battle, chat_a, chat_b, buttons, reveal, send, regenerate),
            True: (named_image, named_question, named_state, named_a, named_b, named_buttons, named_reveal,
                   named_send, named_regenerate),
        }.items():  # fmt: skip
            outputs = [state, left, right, *btns, regen, note]
            asked = gr.on([send_btn.click, text.submit], starter(named), [img, text, tokens, temperature, voter],
                          outputs, api_visibility="private", queue=False)  # fmt: skip
            answered = asked.success(respond, [state, left, right], [state, left, right, *btns],
                                     api_visibility="private", concurrency_id="gpu", concurrency_limit=1,
                                     time_limit=config.time_limit_s)  # fmt: skip
            answered.then(lambda: gr.Button(interactive=True), None, regen, api_visibility="private")
            regen.click(starter(named), [img, text, tokens, temperature, voter], outputs,
                        api_visibility="private", queue=False,
                        ).success(respond, [state, left, right], [state, left, right, *btns],
                                  api_visibility="private", concurrency_id="gpu", concurrency_limit=1,
                                  time_limit=config.time_limit_s)  # fmt: skip
            for key, button in zip(VOTE_LABELS, btns):
                button.click(voter_for(key), [state, voter], [state, note, *btns, regen],
                             api_visibility="private", queue=False)  # fmt: skip
        clear.click(new_battle, None, [battle, chat_a, chat_b, *buttons, regenerate, reveal, image, question],
                    api_visibility="private", queue=False)  # fmt: skip
        board_tab.select(leaderboard, None, [board_note, board_table], api_name="leaderboard")
        refresh.click(leaderboard, None, [board_note, board_table], api_visibility="private")
        compare_button.click(compare, [compare_image, compare_question], [compare_a, compare_b], api_name="compare",
                             concurrency_id="gpu", concurrency_limit=1, time_limit=config.time_limit_s)  # fmt: skip
    demo.queue(max_size=config.queue_size, default_concurrency_limit=1)
    return demo


def create_app(config: ArenaConfig, gpu: Callable = no_gpu) -> tuple[gr.Blocks, VoteStore]:
    """Load the base model and its adapter once, open the vote store and build the app (the Space's module level)."""
    from vlfeedback_kit.serving import load

    served = load(config.model, adapter=config.adapter, model_revision=config.model_revision,
                  adapter_revision=config.adapter_revision)  # fmt: skip
    store = VoteStore(config.votes_dir, config.votes_repo, every_minutes=config.push_every_minutes,
                      public=config.public_votes)  # fmt: skip
    return build_app(served, config, store, gpu, examples=examples_from(config.examples_dir)), store


def launch_options(config: ArenaConfig) -> dict[str, Any]:
    """``launch()`` options every deployment shares: the upload cap and a footer with the API page."""
    return {"max_file_size": config.max_image_bytes, "footer_links": ["api", "gradio", "settings"]}


def vote_buttons(enabled: bool) -> list[Any]:
    return [gr.Button(interactive=enabled) for _ in VOTE_LABELS]


def examples_from(folder: str | Path | None, limit: int = 4) -> list[list[Any]]:
    """(image path, question) examples from a built VLFeedback folder's held-out split (``raw`` config, ``test``,
    written by ``vlfeedback build --eval-fraction``); none when there is no such folder or split."""
    if not folder:
        return []
    from datasets import load_dataset

    try:
        rows = load_dataset(str(folder), "raw", split="test")
    except (FileNotFoundError, ValueError) as err:  # no folder, no raw config or no test split: no examples
        logger.warning("no arena examples from %s: %s", folder, err)
        return []
    out_dir = Path(folder) / ".arena-examples"
    out_dir.mkdir(exist_ok=True)
    examples = []
    for row in rows.select(range(min(limit, len(rows)))):
        path = child(out_dir, row["id"], ".png", what="example id")
        row["image"].convert("RGB").save(path)
        examples.append([str(path), row["prompt"]])
    return examples
