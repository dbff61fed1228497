"""Early Experience (arXiv 2510.08558): reward-free warm starts from the agent's own actions.

At each state of an expert trajectory the current policy proposes K other actions; each is
executed from that exact state and the next state recorded. Two objectives use these
rollouts without any reward: implicit world modeling (predict the next state from state and
action) and self-reflection (explain why the expert's action beats an alternative, then act).
Imitation learning on the expert actions alone is the baseline. Any stage's output is the
starting policy of an ERL or RLVR run (`model.init_from`).

    experts.py    expert trajectories from the env solvers; envs replayed into a given state
    prompts.py    the chats every record is trained on (policy, world-model, rationale prompts)
    build.py      D_expert, D_rollout, IWM and SR records, written as inspectable JSONL
    data.py       reading and checking the files; records -> token rows; parquet for verl
    train.py      the local SFT stages (IL, IWM, SR) with erl.core's masked NLL; resume
    (erl/models/warmstart.py: loading a stage's weights into a fresh model, model.init_from)
"""
