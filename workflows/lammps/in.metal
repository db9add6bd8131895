# NVE MD of fcc copper (5x5x5 cubic cells, 500 atoms) with an exported sciml model.
#   lmp -in in.metal -var plugin $(sciml lammps build) -var model copper.pt2
# The model must know Cu; see README.md.

units           metal
atom_style      atomic
atom_modify     map yes
boundary        p p p
newton          off

lattice         fcc 3.6
region          box block 0 5 0 5 0 5
create_box      1 box
create_atoms    1 box
mass            1 63.546

plugin          load ${plugin}
pair_style      sciml ${model}
pair_coeff      * * Cu

velocity        all create 600.0 87287 mom yes rot yes dist gaussian
timestep        0.001                   # ps: 1 fs
fix             integrate all nve
thermo_style    custom step temp pe ke etotal press pxx pyy pzz
thermo          100
run             1000
