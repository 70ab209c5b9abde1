"""``lbproxy demo``: small backends and a load balancer in front of them, in one process."""
