"""ALFWorld (``make("alfworld")``, ``make("alfworld:<task_type>")``): household tasks (pick and place, heat, cool,
clean, examine in light, pick two) in ALFWorld's text world.

The family: games played by ALFWorld's own TextWorld PDDL engine, so observations and admissible actions are
ALFWorld's exact text, with an expert plan as gold actions (:mod:`.env`). Data: the official json_2.1.1 games under
``$ALFWORLD_DATA`` (from ``alfworld-download``) when present; otherwise ALFWorld-style problems written offline from
the floor-plan layouts, PDDL domain and goal library that the alfworld wheel ships (:mod:`.gen`, run in a child
process and cached; report results on them as "ALFWorld-style"). Reward: 1 when the goal is reached (``won``, and
``score`` = 1.0), else 0.
"""

from .env import TASK_TYPES, ALFWorldEngine, ALFWorldEnv

__all__ = ["ALFWorldEnv", "ALFWorldEngine", "TASK_TYPES"]
