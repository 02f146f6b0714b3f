"""Offline generation of ALFWorld-style games from what the alfworld wheel ships.

The wheel has no games, but it has ALFWorld's PDDL domain and text grammar, its goal library (goal PDDL and task
templates per task type), its object/receptacle tables (which object fits in which receptacle, what can be heated,
cooled, cleaned, toggled) and, for each of the 120 AI2-THOR floor plans, the receptacles with the pose from which
ALFRED's agent uses them (``FloorPlan<n>-openable.json``), the object types in the room (``-objects.json``) and the
reachable floor points (``-layout.npy``). From these a game is written the way ALFWorld writes its own: a PDDL problem
with a location per receptacle, objects of the room's types placed in receptacles that can hold them (the positions
ALFRED sampled in its simulator are not shipped, so the placement is ours), a goal from the goal library under the
constraints ALFRED's task sampler uses, and the grammar with "Your task is to: ..." filled in. The expert plan is
computed from the scene (a full-knowledge expert; Fast Downward's search, which ALFWorld's planner expert uses, can
take minutes and gigabytes on two-object goals), and each game is played in ALFWorld's engine before it is kept: it
must not be won at the start and the plan must win it. The plan is stored as the game's walkthrough.

Everything is a deterministic function of (split, seed, task type). Splits use disjoint floor plans.

Run as ``python -m trl_empg.envs.alfworld.gen --split train --task-type all --out-dir DIR SEED [SEED ...]``: the env
calls this in a subprocess so that a hard timeout can stop it (the engine runs C code that Python signals cannot
interrupt).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import alfworld
import alfworld.gen.constants as constants
import numpy as np
from alfworld.gen.goal_library import gdict as GOAL_LIBRARY
from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

from ..base import SPLITS, check_split, read_json_file
from .env import CACHE_VERSION, TASK_TYPES, ALFWorldEngine

LAYOUTS_DIR = Path(alfworld.__file__).parent / "gen" / "layouts"
#: First floor-plan number of each room type (each type has plans base+1 .. base+30).
ROOM_BASES = {"Kitchen": 0, "LivingRoom": 200, "Bedroom": 300, "Bathroom": 400}
#: Plan numbers (within each room type) per split: test is ALFRED's held-out TEST_SCENE_NUMBERS.
SPLIT_PLAN_INDICES = {"train": range(10, 31), "dev": range(7, 10), "test": range(1, 7)}
#: Sampling attempts per game before giving up (each attempt redraws room, goal and placement).
MAX_ATTEMPTS = 25

STATIC_RECEPTACLE_TYPES = frozenset(constants.RECEPTACLES - constants.MOVABLE_RECEPTACLES_SET)
OBJECT_TYPES = frozenset(constants.OBJECTS_SET - STATIC_RECEPTACLE_TYPES)
LAMP_TYPES = ("DeskLamp", "FloorLamp")
#: Receptacles a lamp may stand on: ALFWorld's goal needs the lamp "in" a receptacle the agent can stand at.
LAMP_HOSTS = frozenset(
    {"Desk", "SideTable", "Dresser", "Shelf", "DiningTable", "CoffeeTable", "TVStand", "CounterTop"}
)
#: Room object types that the layouts name differently from ALFRED's object list.
TYPE_ALIASES = {"Lamp": "DeskLamp"}
#: Per state-change task: the appliance it needs (where, as in ALFRED's task sampler, its object must not start), the
#: property its object must have, and the command verb.
STATE_CHANGE = {
    "pick_clean_then_place_in_recep": ("SinkBasin", "Cleanable", "clean"),
    "pick_heat_then_place_in_recep": ("Microwave", "Heatable", "heat"),
    "pick_cool_then_place_in_recep": ("Fridge", "Coolable", "cool"),
}
#: PDDL property facts and the ALFRED object-property table each is written from.
PROPERTY_FACTS = (("cleanable", "Cleanable"), ("heatable", "Heatable"), ("coolable", "Coolable"))
_PDDL_ESCAPES = {"-": "_minus_", "|": "_bar_", "+": "_plus_", ".": "_dot_", ",": "_comma_"}


def pddl_name(thor_id: str) -> str:
    """ALFWorld's escaping of AI2-THOR ids into PDDL names, which its ``Demangler`` turns into "apple 1"."""
    return "".join(_PDDL_ESCAPES.get(char, char) for char in thor_id)


def location(x: float, z: float, rotation: int, horizon: int) -> str:
    """ALFWorld's location name: grid coordinates (0.25 m steps), rotation in quarter turns, camera horizon."""
    return pddl_name(f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{rotation // 90 % 4}|{horizon}")


def split_floor_plans(split: str) -> list[int]:
    """The floor plans a split draws its games from; the three splits are disjoint."""
    check_split(split)
    return [base + index for base in ROOM_BASES.values() for index in SPLIT_PLAN_INDICES[split]]


@dataclass(frozen=True)
class FloorPlan:
    """What the wheel ships about one AI2-THOR floor plan."""

    number: int
    room: str
    #: THOR receptacle id -> (x, z, rotation, horizon) pose from which the agent uses it.
    receptacles: dict[str, tuple[float, float, int, int]]
    object_types: tuple[str, ...]
    #: Reachable (x, z) floor points.
    points: tuple[tuple[float, float], ...]

    @staticmethod
    def receptacle_type(thor_id: str) -> str:
        """``Sink|x|y|z|SinkBasin`` is a SinkBasin; other ids start with their type."""
        parts = thor_id.split("|")
        return parts[4] if len(parts) == 5 else parts[0]

    def receptacle_types(self) -> list[str]:
        return sorted({self.receptacle_type(rid) for rid in self.receptacles})


@functools.cache
def load_floor_plan(number: int) -> FloorPlan:
    """Read a floor plan's layout files (the receptacles the layouts name are all static, but filter to be safe)."""
    poses = read_json_file(LAYOUTS_DIR / f"FloorPlan{number}-openable.json", "alfworld's receptacle-pose layout")
    types = read_json_file(LAYOUTS_DIR / f"FloorPlan{number}-objects.json", "alfworld's room-object layout", list)
    points = np.load(LAYOUTS_DIR / f"FloorPlan{number}-layout.npy")
    room = next(name for name, base in ROOM_BASES.items() if base < number <= base + 30)
    receptacles = {
        rid: (float(x), float(z), int(rotation), int(horizon))
        for rid, (x, z, rotation, horizon) in sorted(poses.items())
        if FloorPlan.receptacle_type(rid) in STATIC_RECEPTACLE_TYPES
    }
    object_types = sorted({TYPE_ALIASES.get(t, t) for t in types} & OBJECT_TYPES)
    return FloorPlan(
        number, room, receptacles, tuple(object_types), tuple((float(x), float(z)) for x, z in points.tolist())
    )


def _lamp(plan: FloorPlan) -> str | None:
    """The room's lamp type, if it has one and somewhere to stand it."""
    if not LAMP_HOSTS & set(plan.receptacle_types()):
        return None
    return next((lamp for lamp in LAMP_TYPES if lamp in plan.object_types), None)


def _plan_supports(plan: FloorPlan, task_type: str) -> bool:
    if plan.room not in constants.GOALS_VALID[task_type]:
        return False
    if task_type == "look_at_obj_in_light":
        return _lamp(plan) is not None
    if task_type in STATE_CHANGE:
        return STATE_CHANGE[task_type][0] in plan.receptacle_types()
    return True


def _can_hold(receptacle_type: str, object_type: str) -> bool:
    return object_type in constants.VAL_RECEPTACLE_OBJECTS.get(receptacle_type, ())


@dataclass(frozen=True)
class Goal:
    """A task in ALFRED's terms: the object type to handle, the receptacle type to put it in, the lamp to use."""

    task_type: str
    object_type: str
    receptacle_type: str | None = None
    toggle_type: str | None = None

    def forbidden_start(self) -> set[str]:
        """Receptacle types the goal objects must not start in: the goal's own (else it could already hold) and the
        task's appliance (ALFRED's sampler does not pick objects already in the sink / microwave / fridge)."""
        forbidden = {self.receptacle_type} if self.receptacle_type else set()
        if self.task_type in STATE_CHANGE:
            forbidden.add(STATE_CHANGE[self.task_type][0])
        return forbidden

    def description(self, rng: random.Random) -> str:
        template = rng.choice(GOAL_LIBRARY[self.task_type]["templates"])
        return template.format(
            obj=self.object_type.lower(),
            recep=(self.receptacle_type or "").lower(),
            toggle=(self.toggle_type or "").lower(),
            mrecep="",
        )

    def pddl(self) -> str:
        goal = GOAL_LIBRARY[self.task_type]["pddl"].format(
            obj=self.object_type, recep=self.receptacle_type or "", toggle=self.toggle_type or "", mrecep=""
        )
        return goal.replace("#", "-")  # the library writes PDDL's " - type" as " # type"


def _movable_types(plan: FloorPlan) -> list[str]:
    """Object types of the room that some receptacle of the room can hold (lamps are placed separately)."""
    receptacle_types = plan.receptacle_types()
    return [
        t
        for t in plan.object_types
        if t not in LAMP_TYPES and any(_can_hold(receptacle_type, t) for receptacle_type in receptacle_types)
    ]


def _sample_goal(rng: random.Random, plan: FloorPlan, task_type: str, movable: list[str]) -> Goal | None:
    """A goal under ALFRED's constraints whose objects have a legal start receptacle in this room."""
    if task_type == "look_at_obj_in_light":
        return Goal(task_type, rng.choice(movable), toggle_type=_lamp(plan)) if movable else None
    receptacle_types = plan.receptacle_types()
    appliance, prop, _ = STATE_CHANGE.get(task_type, (None, None, None))
    candidates = []
    for object_type in movable:
        if prop and object_type not in constants.VAL_ACTION_OBJECTS[prop]:
            continue
        targets = [r for r in receptacle_types if r != appliance and _can_hold(r, object_type)]
        targets = [
            r
            for r in targets
            if any(_can_hold(s, object_type) for s in receptacle_types if s not in {r, appliance})  # a legal start
        ]
        if targets:
            candidates.append((object_type, targets))
    if not candidates:
        return None
    object_type, targets = rng.choice(candidates)
    return Goal(task_type, object_type, receptacle_type=rng.choice(targets))


def _object_id(rng: random.Random, object_type: str, host: str, taken: set[str]) -> str:
    """A THOR-like id (type and a position near the host) that ALFWorld's demangler turns into "<type> <n>"."""
    _, hx, hy, hz = host.split("|")[:4]
    while True:
        x, y, z = (float(c) + rng.uniform(-0.4, 0.4) for c in (hx, hy, hz))
        thor_id = f"{object_type}|{x:+06.2f}|{y:+06.2f}|{z:+06.2f}"
        if thor_id not in taken:
            taken.add(thor_id)
            return thor_id


def _receptacle_locations(plan: FloorPlan) -> dict[str, str]:
    """One location per receptacle. Stacked drawers and the like share a pose in the layouts; sharing a location would
    let "go to drawer 1" reach drawer 2 too, so later ones get a suffixed name (locations are never shown)."""
    locations: dict[str, str] = {}
    copies: Counter[str] = Counter()
    for thor_id, pose in plan.receptacles.items():
        name = location(*pose)
        locations[thor_id] = f"{name}_bar_{copies[name]}" if copies[name] else name
        copies[name] += 1
    return locations


@dataclass(frozen=True)
class Scene:
    """A sampled game: the goal, which object lies in which receptacle, where everything and the agent are."""

    plan: FloorPlan
    goal: Goal
    task: str
    #: object THOR id -> receptacle THOR id
    placed: dict[str, str]
    #: receptacle THOR id -> location
    locations: dict[str, str]
    start: str

    def object_location(self, thor_id: str) -> str:
        """Objects get a pose of their own next to their receptacle (horizon 60, which no receptacle pose uses), as in
        ALFWorld, so "look" does not list them as lying next to the agent."""
        x, z, rotation, _ = self.plan.receptacles[self.placed[thor_id]]
        return location(x, z, rotation, 60)

    def problem(self) -> str:
        """The PDDL problem, with the facts ALFWorld writes for its games."""
        objects = sorted(self.placed)
        otypes = sorted(OBJECT_TYPES)
        locations = sorted({self.start, *self.locations.values(), *map(self.object_location, objects)})
        declarations = ["agent1 - agent"]
        declarations += [f"{pddl_name(o)} - object" for o in objects]
        declarations += [f"{pddl_name(r)} - receptacle" for r in self.locations]
        declarations += [f"{loc} - location" for loc in locations]
        declarations += [f"{t}Type - otype" for t in otypes]
        declarations += [f"{t}Type - rtype" for t in sorted(STATIC_RECEPTACLE_TYPES)]
        facts = [f"(atLocation agent1 {self.start})"]
        for r, loc in self.locations.items():
            name, rtype = pddl_name(r), self.plan.receptacle_type(r)
            facts += [f"(receptacleType {name} {rtype}Type)", f"(receptacleAtLocation {name} {loc})"]
            if rtype in constants.OPENABLE_CLASS_SET:
                facts.append(f"(openable {name})")
        for o in objects:
            name, otype = pddl_name(o), o.split("|")[0]
            facts += [f"(objectType {name} {otype}Type)", f"(inReceptacle {name} {pddl_name(self.placed[o])})"]
            facts.append(f"(objectAtLocation {name} {self.object_location(o)})")
            if otype in LAMP_TYPES:
                facts.append(f"(toggleable {name})")
                continue
            facts.append(f"(pickupable {name})")
            facts += [
                f"({fact} {name})" for fact, prop in PROPERTY_FACTS if otype in constants.VAL_ACTION_OBJECTS[prop]
            ]
            if otype in constants.MOVABLE_RECEPTACLES_SET:
                facts.append(f"(isReceptacleObject {name})")
        for rtype in self.plan.receptacle_types():
            facts += [f"(canContain {rtype}Type {t}Type)" for t in otypes if _can_hold(rtype, t)]
        header = [f"(define (problem alfworld_style_floorplan{self.plan.number})", "(:domain alfred)"]
        return "\n".join([*header, "(:objects", *declarations, ")", "(:init", *facts, ")", self.goal.pddl()])

    def expert_plan(self, names: dict[str, str]) -> list[str]:
        """An expert with full knowledge of the scene: fetch the goal object(s) (first ones by id), use the task's
        appliance or lamp, put them in the first receptacle of the goal type; open closed receptacles on the way."""
        goal, receptacle_type = self.goal, self.plan.receptacle_type
        commands: list[str] = []
        opened: set[str] = set()
        here: list[str | None] = [None]

        def name(thor_id: str) -> str:
            return names[pddl_name(thor_id).lower()]

        def first(rtype: str) -> str:
            return next(r for r in self.locations if receptacle_type(r) == rtype)

        def visit(receptacle: str, open_it: bool) -> None:
            if here[0] != receptacle:
                commands.append(f"go to {name(receptacle)}")
                here[0] = receptacle
            if open_it and receptacle_type(receptacle) in constants.OPENABLE_CLASS_SET and receptacle not in opened:
                commands.append(f"open {name(receptacle)}")
                opened.add(receptacle)

        wanted = [o for o in sorted(self.placed) if o.split("|")[0] == goal.object_type]
        lamp = next((o for o in sorted(self.placed) if o.split("|")[0] == goal.toggle_type), None)
        for thor_id in wanted[: 2 if goal.task_type == "pick_two_obj_and_place" else 1]:
            visit(self.placed[thor_id], open_it=True)
            commands.append(f"take {name(thor_id)} from {name(self.placed[thor_id])}")
            if goal.task_type in STATE_CHANGE:
                appliance, _, verb = STATE_CHANGE[goal.task_type]
                visit(first(appliance), open_it=False)
                commands.append(f"{verb} {name(thor_id)} with {name(first(appliance))}")
            if lamp is not None:
                visit(self.placed[lamp], open_it=False)
                commands.append(f"use {name(lamp)}")
            else:
                visit(first(goal.receptacle_type), open_it=True)
                commands.append(f"move {name(thor_id)} to {name(first(goal.receptacle_type))}")
        return commands


def sample_scene(rng: random.Random, plan: FloorPlan, task_type: str) -> Scene | None:
    """A scene for ``task_type`` in ``plan``, or None if this draw is infeasible."""
    movable = _movable_types(plan)
    goal = _sample_goal(rng, plan, task_type, movable)
    if goal is None:
        return None
    receptacles = list(plan.receptacles)
    counts = {t: 1 + (rng.random() < 0.3) + (rng.random() < 0.1) for t in movable}
    if task_type == "pick_two_obj_and_place":
        counts[goal.object_type] = max(2, counts[goal.object_type])
    placed: dict[str, str] = {}
    taken: set[str] = set()
    for object_type, count in counts.items():
        forbidden = goal.forbidden_start() if object_type == goal.object_type else set()
        hosts = [
            r
            for r in receptacles
            if _can_hold(plan.receptacle_type(r), object_type) and plan.receptacle_type(r) not in forbidden
        ]
        if not hosts:
            if object_type == goal.object_type:
                return None
            continue
        for _ in range(count):
            host = rng.choice(hosts)
            placed[_object_id(rng, object_type, host, taken)] = host
    if goal.toggle_type:
        host = rng.choice([r for r in receptacles if plan.receptacle_type(r) in LAMP_HOSTS])
        placed[_object_id(rng, goal.toggle_type, host, taken)] = host
    locations = _receptacle_locations(plan)
    while True:  # the agent starts "in the middle of a room": a floor pose that is no receptacle's
        x, z = rng.choice(plan.points)
        start = location(x, z, rng.choice((0, 90, 180, 270)), 30)
        if start not in locations.values():
            break
    return Scene(plan, goal, goal.description(rng), placed, locations, start)


def _validated_walkthrough(engine: ALFWorldEngine, game: dict[str, Any], scene: Scene) -> list[str] | None:
    """The expert plan, if the game is not won at the start and the plan wins it in ALFWorld's engine."""
    engine.load(game)
    walkthrough = scene.expert_plan(engine.entity_names())
    state = engine.reset()
    if state["won"]:
        return None
    for command in walkthrough:
        if command not in state["admissible_commands"]:
            return None
        state = engine.step(command)
    return walkthrough if state["won"] else None


def generate_game(engine: ALFWorldEngine, split: str, seed: int, task_type: str | None) -> dict[str, Any]:
    """The game (contents of a ``.tw-pddl`` file) of (split, seed, task type); ``task_type=None`` draws one."""
    check_split(split)
    key = f"alfworld-style/{split}/{task_type or 'all'}/{seed}"
    kind = task_type or random.Random(key).choice(TASK_TYPES)
    plans = [plan for plan in map(load_floor_plan, split_floor_plans(split)) if _plan_supports(plan, kind)]
    with open(ALFRED_PDDL_PATH) as f:
        domain = f.read()
    with open(ALFRED_TWL2_PATH) as f:
        grammar = f.read()
    for attempt in range(MAX_ATTEMPTS):
        rng = random.Random(f"{key}/{attempt}")
        scene = sample_scene(rng, rng.choice(plans), kind)
        if scene is None:
            continue
        game = {
            "pddl_domain": domain,
            "grammar": grammar.replace("UNKNOWN GOAL", scene.task),
            "pddl_problem": scene.problem(),
            "solvable": True,
        }
        walkthrough = _validated_walkthrough(engine, game, scene)
        if walkthrough is not None:
            metadata = {"split": split, "seed": seed, "task_type": kind, "floor_plan": scene.plan.number}
            metadata |= {"task": scene.task, "version": CACHE_VERSION}
            return {**game, "walkthrough": walkthrough, "alfworld_style": metadata}
    raise RuntimeError(f"No solvable ALFWorld-style {kind} game for {split} seed {seed} in {MAX_ATTEMPTS} attempts.")


def write_game(game: dict[str, Any], path: Path) -> None:
    """Write atomically, so that concurrent generators and readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(game, f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write ALFWorld-style games (.tw-pddl) for task seeds.")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--task-type", choices=("all", *TASK_TYPES), default="all")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("seeds", type=int, nargs="+")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    task_type = None if args.task_type == "all" else args.task_type
    engine = ALFWorldEngine()
    try:
        for seed in args.seeds:
            write_game(generate_game(engine, args.split, seed, task_type), args.out_dir / f"{seed}.tw-pddl")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
