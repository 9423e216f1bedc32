"""The damage SPEC language in one text (SPEC §1), for `--help` and error messages.

Without torch, so that the CLI can show it without importing torch (`lesion.damage` loads its modules lazily).
"""

SPEC_HELP = """\
crash:SITE:UNITS[:value=V]    units of a site output 0 (or V) after their activation, for every input and
                              position; SITE = index or name from `lesion sites` (path, path#CALL, path@in);
                              UNITS = 3,5,7 | frac=0.3 | count=4 (random, from --seed)
head:SITE:HEADS               attention heads of an attention site output 0 (HEADS as UNITS)
filter:SITE:UNITS             delete units/filters: silent downstream (incoming weights, bias and the BN/LN
                              scale and shift between layer and site set to 0, the unit's value forced to 0)
delete:PARAM:frac=F           delete (zero) a random fraction F of the weights of PARAM
delete:PARAM:smallest=F       delete the fraction F of smallest-magnitude weights of PARAM
delete:PARAM:idx=I,J,...      delete these flat indices of PARAM
gauss:SIGMA | gauss:PARAM:SIGMA     w + du, du_i ~ N(0, SIGMA²/n): E|du|² = SIGMA²
sphere:SIGMA | sphere:PARAM:SIGMA   w + SIGMA·u, u uniform on the unit sphere
direction:FILE[:SIGMA]        w + du for du read from FILE (.npy vector or .pt), scaled to norm SIGMA if given
bitflip:[PARAM:]ber=R[:fmt=F][:bits=B1,B2]  random bit flips at bit-error rate R in the stored format F
                              (float32, float16, bfloat16, int8; default: the format the weights are stored
                              in), optionally only at bit positions B
bitflip:PARAM:INDEX:BIT[:fmt=F]     flip bit BIT (0 = least significant, top = sign) of one weight
stuck:PARAM:INDEX:VALUE       one weight stuck at VALUE (a number, inf, -inf, nan)
act-bitflip:SITE:ber=R[:fmt=F][:bits=B1,B2][:permanent]  bit flips in the values SITE outputs: each bit of
                              each value flips with probability R, drawn per input (a transient soft error hits
                              one inference); permanent: the same positions on every input; F defaults to the
                              site's own dtype; int8 words use the site's scale (max |clean value| / 127)
act-stuck:SITE:rate=R[:value=V][:permanent]  each value SITE outputs is stuck at V (default 0) with probability
                              R, per input (transient) or the same positions on every input (permanent)
PARAM is a parameter name (fc1.weight), a glob (*.weight), all, weights or biases; INDEX a flat index or i,j."""
