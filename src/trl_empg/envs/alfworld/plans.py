"""Gold plans an imitating agent can learn from: :func:`search_plan`, ALFWorld's expert plan rewritten so that the
agent only goes where it could know to look."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from alfworld.gen.constants import VAL_RECEPTACLE_OBJECTS

__all__ = ["search_plan"]


_FACT = re.compile(r"\((inReceptacle|openable|objectType|receptacleType) ([^\s()]+)(?: ([^\s()]+))?\)")


def search_plan(problem: str, names: Mapping[str, str], expert: Sequence[str], admissible: Sequence[str]) -> list[str]:
    """An expert that cannot see inside receptacles it has not visited: the full-knowledge ``expert`` plan with each
    walk to a goal object replaced by a search.

    The search visits the receptacles that can hold the goal object (ALFRED's receptacle-object table, less the
    goal's receptacle type and the task's appliance, where the object never starts), open surfaces before closed
    receptacles, each group in the order of the first observation's admissible ``go to`` commands; it opens each
    closed one it reaches and takes the first object of the goal's type it sees; for a second object it first
    returns to a receptacle where it saw one, else searches on. What follows each take (the appliance, the lamp, the
    goal receptacle) is the expert's, without repeating a ``go to`` to where the agent stands or an ``open`` of what
    is open. ``names`` maps PDDL names (lower case) to the names the player sees (:meth:`ALFWorldEngine.entity_names`).
    """
    seen_as = {pddl.lower(): name for pddl, name in names.items()}
    contents: dict[str, list[str]] = {}
    openable: set[str] = set()
    kind: dict[str, str] = {}
    for fact, first, second in _FACT.findall(problem):  # the goal's facts have variables (?r): not in ``names``
        first_name, second_name = seen_as.get(first.lower()), seen_as.get(second.lower())
        if first_name is None:
            continue
        if fact == "inReceptacle" and second_name is not None:
            contents.setdefault(second_name, []).append(first_name)
        elif fact == "openable":
            openable.add(first_name)
        elif fact != "inReceptacle":
            kind[first_name] = second.lower()
    order = [command[len("go to ") :] for command in admissible if command.startswith("go to ")]
    takes = [i for i, command in enumerate(expert) if command.startswith("take ")]
    if not takes or not order:
        return list(expert)
    # Where an object of each type may start (ALFRED's receptacle-object table), and the receptacle types the goal
    # object never starts in: the goal's own and the task's appliance (see gen.Goal.forbidden_start).
    can_hold = {
        f"{r}type".lower(): {f"{o}type".lower() for o in objects} for r, objects in VAL_RECEPTACLE_OBJECTS.items()
    }
    forbidden = {kind.get(c.split(" to ")[-1]) for c in expert if c.startswith("move ")}
    forbidden |= {kind.get(c.split(" with ")[-1]) for c in expert if c.startswith(("heat ", "cool ", "clean "))}
    plan: list[str] = []
    here: list[str | None] = [None]
    opened: set[str] = set()
    visited: set[str] = set()

    def arrive(receptacle: str) -> None:
        if here[0] != receptacle:
            plan.append(f"go to {receptacle}")
            here[0] = receptacle
        if receptacle in openable and receptacle not in opened:
            plan.append(f"open {receptacle}")
            opened.add(receptacle)
        visited.add(receptacle)

    for number, index in enumerate(takes):
        wanted = expert[index].split(" from ")[0][len("take ") :]
        wanted_kind = kind[wanted]

        def holds(receptacle: str, wanted_kind: str = wanted_kind) -> str | None:
            return next((o for o in contents.get(receptacle, []) if kind.get(o) == wanted_kind), None)

        known = [r for r in order if r in visited and holds(r)]
        hosts = [r for r in order if r not in visited and wanted_kind in can_hold.get(kind.get(r, ""), ())]
        hosts = [r for r in hosts if kind[r] not in forbidden]
        hosts = [r for r in hosts if r not in openable] + [r for r in hosts if r in openable]
        rest = [r for r in order if r not in visited and r not in hosts]
        for receptacle in known[:1] or hosts + rest:
            arrive(receptacle)
            found = holds(receptacle)
            if found:
                break
        else:
            raise ValueError("the goal object was not found")
        contents[receptacle].remove(found)
        plan.append(f"take {found} from {receptacle}")
        end = takes[number + 1] if number + 1 < len(takes) else len(expert)
        expert_at = expert[index].split(" from ")[-1]  # where the expert stands: replay its steps from there
        for command in expert[index + 1 : end]:
            if command.startswith("take "):
                break
            if command.startswith("go to "):
                if number + 1 < len(takes) and plan[-1].startswith(("move ", "use ")):
                    break  # the walk to the next object: replaced by its search
                expert_at = command[len("go to ") :]
                if here[0] != expert_at:
                    plan.append(command)
                    here[0] = expert_at
                continue
            if here[0] != expert_at:
                plan.append(f"go to {expert_at}")
                here[0] = expert_at
            if command.startswith("open "):
                if command[len("open ") :] not in opened:
                    plan.append(command)
                    opened.add(command[len("open ") :])
                continue
            plan.append(command.replace(f" {wanted} ", f" {found} "))
    return plan
