"""Tissue classes of the phantom's label map (uint8 values)."""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """Tissue classes of the label map (uint8 values)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BONE = 3  #: cortical bone (ribs, vertebral shell, sternum shell, posterior arch)
    MARROW = 4  #: trabecular bone / marrow (vertebral bodies, sternum)
    LUNG = 5
    LUNG_VESSEL = 6
    MYOCARDIUM = 7
    BLOOD = 8  #: heart chambers, aorta, pulmonary arteries, superior vena cava
    MEDIASTINUM = 9  #: mediastinal soft tissue (nodes, oesophagus, vessel walls, hila)
    AIRWAY = 10  #: trachea and main bronchi (air)
    SPINAL_CANAL = 11
    LIVER = 12  #: sub-diaphragmatic organs (liver on the right, stomach/spleen on the left)
    DISC = 13
    TUMOUR = 14
    NECROSIS = 15  #: necrotic tumour core (part of the tumour mask)


N_TISSUES = len(Tissue)
TUMOUR_CLASSES = (Tissue.TUMOUR, Tissue.NECROSIS)
