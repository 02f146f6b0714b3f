"""trl-empg demo Space: watch an agent play a text environment, see how confident each step is, play against it.

This file is only the Gradio wiring: the layout and event handlers that turn widget values into calls of the modules
beside it and their results into widget updates.

- :mod:`hosting`: what the operator allows (:class:`hosting.HostPolicy`) and the checks every visitor request passes
  before anything is imported, built or loaded: every event here is also a public HTTP API.
- :mod:`agent_settings`: the settings panel, each widget one field of the project's own settings dataclasses.
- :mod:`agents`: the checkpoint menu, loading agents, the settings a checkpoint was trained with.
- :mod:`environments`: the environment menu, held-out seeds, the worker pool an episode runs in.
- :mod:`watch`: the agent plays a task through :func:`trl_empg.rollout.iter_episodes`, turn by turn.
- :mod:`play`: a person plays through :class:`trl_empg.rollout.EpisodeEngine` with the agent's suggestion beside them.
- :mod:`compare`: two checkpoints on the same seeds through :func:`trl_empg.workflows.evaluation.evaluate_agent`.
- :mod:`render`: tables, confidence colours (EMPG's min-max normalisation over the episode's steps) and the plot.

Run ``python spaces/app.py [--host H] [--port P] [--checkpoint C ...] [operator settings]``; it binds 127.0.0.1
unless ``--host`` or ``GRADIO_SERVER_NAME`` says otherwise (Hugging Face Spaces sets it to 0.0.0.0).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr
import pandas as pd
from agent_settings import SETTINGS, DemoSettings, Setting, SpaceError
from agents import BUILTIN_TINY, available_checkpoints, checkpoint_defaults
from compare import compare_checkpoints
from environments import DEFAULT_ENV, MENU_SEEDS, SPLIT, env_choices, env_info
from hosting import HostPolicy, active_policy, configure, policy_flags
from play import PlaySession
from render import CSS, entropy_figure, episode_html, game_confidences, play_history_html, suggestion_markdown
from watch import EpisodeView, run_episode

INTRO = (
    "# trl-empg: watch an agent act, see its step-by-step confidence, play against it\n"
    "An LLM agent trained with [Entropy-Modulated Policy Gradients](https://arxiv.org/abs/2509.09265) plays held-out "
    "tasks of a text environment. Each step's entropy H (mean over the reply's tokens) is shown as confidence "
    "1 − Hn, with Hn EMPG's own min-max normalisation relative to this episode's steps: 0 = its least certain step, "
    "1 = its most certain. EMPG scales confident steps up and uncertain ones down, and rewards steps that lead to "
    "clear next steps."
)


# -- handlers ---------------------------------------------------------------------------------------------------------


def settings_or_error(values: Sequence[Any]) -> DemoSettings | str:
    """The request's settings, checked by their dataclasses and against the operator's bounds, or the message."""
    try:
        return active_policy().check_settings(DemoSettings.from_values(values))
    except SpaceError as error:
        return f"Error: {error}"


def watch_episode(checkpoint: str, env_id: str, seed: Any, *settings_values: Any) -> Iterator[tuple]:
    """Handler of "Run episode": streams (status, turns table, entropy plot)."""
    settings = settings_or_error(settings_values)
    if isinstance(settings, str):
        yield settings, episode_html(EpisodeView()), None
        return
    for view in run_episode(checkpoint, env_id, seed, settings):
        yield view.status, episode_html(view), entropy_figure(view, settings)


def play_outputs(session: PlaySession | None, message: str = "") -> tuple:
    """(session, status, observation, suggestion, admissible actions, history) for the "Play yourself" tab."""
    if session is None:
        return None, message, "", "", gr.update(choices=[], value=None, visible=False), ""
    observation = f"**Observation** (what the agent sees):\n\n{session.observation}" if session.observation else ""
    actions = session.admissible_actions
    radio = gr.update(choices=actions, value=None, visible=bool(actions))
    suggestion = suggestion_markdown(session.suggestion, game_confidences(session)[-1])
    return session, message or session.status(), observation, suggestion, radio, play_history_html(session)


def start_game(old: PlaySession | None, checkpoint: str, env_id: str, seed: Any, *settings_values: Any) -> tuple:
    """Handler of "Start game": a new session on the chosen task (the previous one is closed)."""
    if old is not None:
        old.close()
    settings = settings_or_error(settings_values)
    if isinstance(settings, str):
        return play_outputs(None, settings)
    try:
        return play_outputs(PlaySession(checkpoint, env_id, seed, settings))
    except SpaceError as error:
        return play_outputs(None, f"Error: {error}")


def play_move(session: PlaySession | None, move: str | None) -> tuple:
    """Handler of a move (an admissible action clicked, free text sent, or the agent's suggestion taken)."""
    if session is None:
        return play_outputs(None, "Start a game first.")
    try:
        session.act(move)
    except SpaceError as error:
        return play_outputs(session, f"Error: {error}")
    return play_outputs(session)


def play_suggestion(session: PlaySession | None) -> tuple:
    suggestion = session.suggestion if session is not None else None
    return play_move(session, suggestion.action if suggestion is not None else None)


def close_session(session: PlaySession | None) -> None:
    if session is not None:
        session.close()


def compare_handler(
    checkpoint_a: str, checkpoint_b: str, env_id: str, num_tasks: Any, *settings_values: Any
) -> tuple[pd.DataFrame, str]:
    """Handler of "Compare"."""
    settings = settings_or_error(settings_values)
    if isinstance(settings, str):
        return pd.DataFrame(), settings
    try:
        count = active_policy().check_compare_tasks(num_tasks)
    except SpaceError as error:
        return pd.DataFrame(), f"Error: {error}"
    return compare_checkpoints(checkpoint_a, checkpoint_b, env_id, count, settings)


def on_checkpoint_change(checkpoint: str) -> list[Any]:
    """Preset the settings (and environment) the chosen checkpoint was trained with."""
    defaults = checkpoint_defaults((checkpoint or "").strip())
    env = gr.update(value=defaults.env_id) if defaults.env_id else gr.update()
    return [defaults.note, env, *defaults.settings.values()]


def on_env_change(env_id: str, *settings_values: Any) -> tuple:
    """List the environment's first test seeds (built with the page's environment options), or say why not."""
    settings = settings_or_error(settings_values) if settings_values else DemoSettings.from_mapping()
    if isinstance(settings, str):
        return settings, gr.update(choices=[], value=None)
    try:
        info = env_info(env_id, settings.env_kwargs)
    except SpaceError as error:
        return f"Error: {error}", gr.update(choices=[], value=None)
    note = (
        f"{env_id}: {len(info.seeds)} held-out {SPLIT} tasks, seeds {min(info.seeds)}-{max(info.seeds)} "
        f"(the menu lists the first {min(MENU_SEEDS, len(info.seeds))}; type any other)."
    )
    return note, gr.update(choices=list(info.seeds[:MENU_SEEDS]), value=info.seeds[0])


# -- layout -----------------------------------------------------------------------------------------------------------


def setting_widget(setting: Setting, value: Any) -> gr.components.Component:
    """The widget of one setting, labelled and explained by its field's own help text."""
    common = {"label": setting.label, "info": setting.help}
    if setting.choices:
        return gr.Radio(list(setting.choices), value=value, **common)
    if setting.kind == "bool":
        return gr.Checkbox(value=value, **common)
    if setting.kind in ("int", "float"):
        return gr.Number(value=value, precision=0 if setting.kind == "int" else None, **common)
    return gr.Textbox(value=value, elem_id=setting.name.replace("_", "-"), **common)


def settings_panel(defaults: DemoSettings) -> list[gr.components.Component]:
    """The settings widgets in :data:`agent_settings.SETTINGS` order, one row per defining dataclass."""
    widgets: list[gr.components.Component] = []
    groups: list[list[tuple[Setting, Any]]] = []
    for setting, value in zip(SETTINGS, defaults.values()):
        if groups and groups[-1][0][0].source is setting.source:
            groups[-1].append((setting, value))
        else:
            groups.append([(setting, value)])
    for group in groups:
        with gr.Row():
            widgets.extend(setting_widget(setting, value) for setting, value in group)
    return widgets


def build_demo(policy: HostPolicy | None = None) -> gr.Blocks:
    """The page for the operator's ``policy`` (installed for every request; default: the environment's): shared
    checkpoint / env / seed / settings controls, then one tab per view."""
    policy = configure(policy or HostPolicy.from_env())
    checkpoint_menu = available_checkpoints()
    values = [value for _, value in checkpoint_menu]
    with gr.Blocks(title="trl-empg: watch an EMPG agent") as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            checkpoint = gr.Dropdown(
                checkpoint_menu,
                value=values[0],
                allow_custom_value=policy.allow_hub_ids,
                label="Checkpoint",
                info="the Space's agents" + (", or type a Hub model id" if policy.allow_hub_ids else ""),
                scale=3,
            )
            env = gr.Dropdown(env_choices(), value=DEFAULT_ENV, allow_custom_value=True, label="Environment", scale=2)
            seed = gr.Dropdown([], value=None, allow_custom_value=True, label=f"Task seed ({SPLIT} split)", scale=1)
        checkpoint_note = gr.Markdown(elem_id="checkpoint-note")
        env_note = gr.Markdown(elem_id="env-note")
        with gr.Accordion("Agent settings (match the agent's training)", open=False):
            settings = settings_panel(DemoSettings.from_mapping())

        with gr.Tab("Watch the agent"):
            run_button = gr.Button("Run episode", variant="primary", elem_id="run-episode")
            episode_status = gr.Markdown(elem_id="episode-status")
            turns = gr.HTML(episode_html(EpisodeView()), elem_id="episode-turns")
            plot = gr.Plot(label="Step entropy and EMPG weights", elem_id="entropy-plot")
        with gr.Tab("Play yourself"):
            session = gr.State(None, time_to_live=policy.session_ttl_s, delete_callback=close_session)
            start_button = gr.Button("Start game", variant="primary", elem_id="start-game")
            play_status = gr.Markdown(elem_id="play-status")
            observation = gr.Markdown(elem_id="play-observation")
            suggestion = gr.Markdown(elem_id="suggestion")
            actions = gr.Radio([], label="Admissible actions (click one to play it)", visible=False)
            with gr.Row():
                typed = gr.Textbox(label="or type an action (or a whole reply in the prompt style)", scale=4)
                send_button = gr.Button("Send", scale=1)
                suggestion_button = gr.Button("Play the agent's suggestion", scale=1)
            history = gr.HTML(elem_id="play-history")
        with gr.Tab("Compare checkpoints"):
            gr.Markdown(
                "Both agents play the same first N test tasks with the settings above (A: the checkpoint above), "
                "evaluated as `trl-empg eval` does."
            )
            with gr.Row():
                # B defaults to another trained agent than A (with the quickstart's: A EMPG, B its warm start).
                others = [value for value in values[1:] if value != BUILTIN_TINY]
                checkpoint_b = gr.Dropdown(
                    checkpoint_menu,
                    value=others[0] if others else values[0],
                    allow_custom_value=policy.allow_hub_ids,
                    label="Checkpoint B",
                    scale=3,
                )
                num_tasks = gr.Number(
                    value=min(5, policy.max_compare_tasks),
                    precision=0,
                    minimum=1,
                    maximum=policy.max_compare_tasks,
                    label="number of test tasks",
                    scale=1,
                )
            compare_button = gr.Button("Compare", variant="primary", elem_id="compare")
            compare_summary = gr.Markdown(elem_id="compare-summary")
            compare_table = gr.Dataframe(label="Per task", interactive=False, elem_id="compare-table")

        play_views = [session, play_status, observation, suggestion, actions, history]
        checkpoint.change(on_checkpoint_change, checkpoint, [checkpoint_note, env, *settings])
        env.change(on_env_change, [env, *settings], [env_note, seed])
        demo.load(on_checkpoint_change, checkpoint, [checkpoint_note, env, *settings]).then(
            on_env_change, [env, *settings], [env_note, seed]
        )
        run_button.click(
            watch_episode,
            [checkpoint, env, seed, *settings],
            [episode_status, turns, plot],
            api_name="run_episode",
            concurrency_id="agent",
        )
        start_button.click(
            start_game,
            [session, checkpoint, env, seed, *settings],
            play_views,
            api_name="start_game",
            concurrency_id="agent",
        )
        actions.input(play_move, [session, actions], play_views, concurrency_id="agent")
        send_button.click(play_move, [session, typed], play_views, concurrency_id="agent").then(
            lambda: "", None, typed
        )
        typed.submit(play_move, [session, typed], play_views, concurrency_id="agent").then(lambda: "", None, typed)
        suggestion_button.click(play_suggestion, session, play_views, concurrency_id="agent")
        compare_button.click(
            compare_handler,
            [checkpoint, checkpoint_b, env, num_tasks, *settings],
            [compare_table, compare_summary],
            api_name="compare",
            concurrency_id="agent",
        )
    return demo


def serve(
    host: str = "127.0.0.1", port: int = 7860, policy: HostPolicy | None = None, *, block: bool = True
) -> gr.Blocks:
    """Launch the page for the operator's ``policy``; with ``block=False`` return once it serves (tests run it in
    the background). Every request waits in Gradio's queue: ``concurrency_limit`` run at once, ``max_queue`` wait."""
    demo = build_demo(policy)
    policy = active_policy()
    demo.queue(default_concurrency_limit=policy.concurrency_limit, max_size=policy.max_queue, api_open=False)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, css=CSS, show_error=True)
    return demo


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options: host and port (default: Gradio's own environment variables, then 127.0.0.1:7860) and
    every operator setting of :class:`hosting.HostPolicy` (default: its ``TRL_EMPG_SPACE_<FIELD>`` variable)."""
    parser = argparse.ArgumentParser(description="trl-empg demo Space: watch, play against and compare agents.")
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default: $GRADIO_SERVER_NAME or 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port (default: $GRADIO_SERVER_PORT or 7860)",
    )
    singular = {"envs": "allow-env", "checkpoints": "checkpoint"}
    for name, default, help_text in policy_flags():
        flag = "--" + singular.get(name, name.replace("_", "-"))
        variable = f"$TRL_EMPG_SPACE_{name.upper()}"
        if isinstance(default, tuple):
            parser.add_argument(flag, dest=name, action="append", help=f"{help_text} Repeatable; adds to {variable}.")
        elif isinstance(default, bool):
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=f"{help_text} ({variable})")
        else:
            parser.add_argument(
                flag, dest=name, type=type(default), help=f"{help_text} (default: {variable} or {default})"
            )
    return parser.parse_args(argv)


def policy_from_args(args: argparse.Namespace) -> HostPolicy:
    """The operator's settings: the environment variables', then the flags (list flags add to their variable's)."""
    base = HostPolicy.from_env()
    overrides = {}
    for name, default, _ in policy_flags():
        value = getattr(args, name)
        if value is not None:
            overrides[name] = (*getattr(base, name), *value) if isinstance(default, tuple) else value
    return HostPolicy.from_env(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    serve(args.host, args.port, policy_from_args(args))


if __name__ == "__main__":
    main()
