"""The simulated world: task families, their MuJoCo envs, batched rollouts and the policy."""
